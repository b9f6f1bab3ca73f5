"""Readers of the event log: one reader and one aggregation, rendered as ``holyroute report`` and the dashboard.

They read JSON lines written by the event sinks and never take part in a call: nothing here may import the core's
call machinery, the state backends or the drivers, and nothing below the CLI imports this layer.
"""
