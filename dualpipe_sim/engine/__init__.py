"""Engine: a schedule replayed on a cost model, recorded as a trace.

``fastpath`` (one linear pass, async P2P), ``simpy_engine`` (the SimPy reference engine, blocking
P2P), ``validate`` (proof that a schedule can finish), ``step`` (the end of a training step) and
``trace`` (what a run recorded). May import: the inputs, the schedules part and the shared leaves;
never the readers, the outputs or the face (cli, API, compare, sweep, plan).
"""
