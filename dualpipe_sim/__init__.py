"""dualpipe-sim: a discrete-event simulator of pipeline-parallel training schedules."""

__version__ = "0.1.0"
