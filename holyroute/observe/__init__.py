"""Observation: what holyroute's events become outside the process, for people and dashboards.

``metrics`` turns events into Prometheus counters and histograms and reads live gauges from routers at scrape time;
``tracing`` turns them into OpenTelemetry spans. Both are event sinks, public as :mod:`holyroute.metrics` and
:mod:`holyroute.tracing`, and both are optional extras: this ``__init__`` imports neither, so ``import holyroute``
loads no Prometheus or OpenTelemetry. The event sink interface stays in ``core/events.py`` and the alert rules in
``core/alerts.py``, because the router emits and evaluates them. Observation reads the drivers and the core; nothing
below it (drivers, state, core, rollout, config, boundary) may import it, and it never decides where traffic goes.
"""
