"""Engine: a schedule replayed on a cost model, recorded as a trace.

``replay`` (the replay core: which action each rank runs next and when, async and blocking P2P;
the simulation, validation and the end-of-step channels all use it), ``simpy_engine`` (the SimPy
reference engine the tests hold the replay equal to), ``validate`` (proof that a schedule can
finish: completeness, then the replay at zero cost), ``step`` (the end of a training step) and
``trace`` (what a run recorded). May import: the inputs, the schedules part and the shared leaves;
never the readers, the outputs or the face (cli, API, compare, sweep, plan).
"""
