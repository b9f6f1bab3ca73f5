"""``python -m holyroute.cli``: the ``holyroute`` command."""

import sys

from holyroute.cli.commands import main

sys.exit(main())
