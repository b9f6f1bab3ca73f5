"""Total parsers for every value that comes from outside: upstream headers and bodies, caller bodies, durations, the
response cache's headers, stored entries and streams (``cache``).

Each function here never raises past the boundary and clamps to the bounds it is given, so the layers above only see
validated values. This is the bottom layer: it must never import anything else from holyroute.
"""
