"""Readers: pure functions of a trace.

``metrics`` turns a trace into the typed ``Metrics`` record (metrics.json). May import: the trace
(``engine.trace``) and the step's reader, the schedules' vocabulary and the shared leaves; never
the cost model, the engines' replay or the outputs.
"""
