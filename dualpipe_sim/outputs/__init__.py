"""Outputs: files and pictures made from a trace and its metrics.

``files`` (metrics.json's text, all-or-nothing writes), ``plots/`` (PNG charts, report.html) and
``exports/`` (Chrome trace, memory timelines). May import: the trace, the readers, the schedules'
vocabulary and the shared leaves; never the engines' replay or the face.
"""
