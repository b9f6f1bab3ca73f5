"""Prometheus metrics for holyroute (``pip install 'holyroute[prometheus]'``): the public name of
:mod:`holyroute.observe.metrics`, where the counters, histograms, live gauges and :func:`serve` are written.

>>> import prometheus_client, holyroute
>>> from holyroute.metrics import Metrics, serve
>>> metrics = Metrics(prometheus_client.CollectorRegistry())
>>> client = metrics.instrument(holyroute.client("holyroute.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

from holyroute.observe.metrics import LATENCY_BUCKETS, TTFT_BUCKETS, Metrics, MetricsServer, serve

__all__ = ["LATENCY_BUCKETS", "TTFT_BUCKETS", "Metrics", "MetricsServer", "serve"]
