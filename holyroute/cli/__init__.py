"""The command line (``holyroute``, ``python -m holyroute``): parse arguments, build what the other layers offer, print.

This layer decides nothing about traffic: it only calls the public API, the readers and the drivers. It sits on top
of every other layer, and nothing inside holyroute may import it.
"""

from holyroute.cli.commands import demo_config, main, run_demo, run_explain, run_prices

__all__ = ["demo_config", "main", "run_demo", "run_explain", "run_prices"]
