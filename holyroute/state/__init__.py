"""State shared between processes: cooldowns, rate limits, rollouts and spend, behind one interface.

``base`` is the interface and the local lease book (it imports no backend); ``memory``, ``file`` and ``redis`` are
the backends, each independent of the others; ``factory`` chooses one from the configuration. ``cache`` holds the
response cache's stores (memory, Redis), apart from the state backends. Backends depend on the core's value types
and protocols only, never on the router itself, the drivers, the readers or the CLI.
"""
