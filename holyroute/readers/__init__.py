"""Readers of the event log: one reader and one aggregation, rendered as ``holyroute report`` and the dashboard.

``log.py`` reads a line (total) and says which arm a served call counts for; ``aggregate.py`` folds lines into every
number the readers show (with ``tally.py`` for one group's numbers and ``activity.py`` for health and feeds);
``report.py`` and ``dashboard.py`` render that aggregation and never read an event themselves. They never take part
in a call: nothing here may import the core's call machinery, the state backends or the drivers, and nothing below
the CLI imports this layer.
"""
