"""OpenTelemetry traces for holyroute (``pip install 'holyroute[otel]'``): the public name of
:mod:`holyroute.observe.tracing`, where the spans are built from the events.

>>> from holyroute.tracing import instrument
>>> client = instrument(holyroute.client("holyroute.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

from holyroute.observe.tracing import Tracer, instrument

__all__ = ["Tracer", "instrument"]
