"""The sans-I/O decision core: where a call goes, whether it is retried or failed over, what it costs.

``call`` turns a request into steps (send, wait, acquire, respond, give up) and holds the :class:`Router`, its parts
chained from ``call_state`` (``planning``, ``eligibility``, ``waiting``, ``accounting``, ``attempts``, ``sending``);
``health`` keeps what the 429/5xx decisions found (``ejection``, ``cooldowns``, ``rate_limits``); ``retry_budget``
caps retries per route; ``spend`` caps money (``budgets:``); ``context`` fits requests into context windows;
``usage`` counts tokens and cost; ``alerts`` watches thresholds; ``cache`` decides what the response cache keeps and
under which key (its stores live in ``holyroute.state.cache``); ``ports`` holds the value types and protocols the
state backends implement. Time comes from an injected clock. The core must never import the state backends, the
drivers, the readers, the metrics/tracing exporters or the CLI: a backend is chosen by the factory registered in
``ports``.
"""
