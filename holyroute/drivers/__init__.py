"""The httpx2 drivers: the sync and async transports that send what the core asks for and report what came back.

``transport`` is the two transports and ``client()``/``async_client()``; ``stream`` taps streamed bodies; ``compat``
bridges httpx2 and the SDK; ``probe`` runs active health checks; ``cache`` makes the response cache's one lookup and
one write. A behaviour is decided once in the core, never here. Drivers must never import the readers or the CLI.
"""
