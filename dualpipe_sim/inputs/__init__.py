"""Inputs: what a run is given.

A scenario file or dict read and checked (``scenario``), the cost model that says how long each
action takes and what it holds (``costs``, with ``channels`` laying out one action's components),
the random model (``variability``) and Kineto traces read for ``calibrate`` (``kineto``);
``resolve`` turns a scenario into the figures one run reads, deriving a [model] once.
May import: the schedules part, the model package and the shared leaves (``errors``, ``units``,
``limits``); never the engine's replay, the readers or the outputs.
"""
