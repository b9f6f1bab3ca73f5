"""The rollout engine and its statistics: what share of traffic each arm gets and when a rollout steps.

``split`` picks an arm by weight, ``stats`` holds the sketches and tests (Wilson, sequential non-inferiority),
``engine`` judges candidates and keeps rollout state through a store protocol. No I/O happens here; it must never
import the core's call machinery, the state backends, the drivers, the readers or the CLI.
"""
