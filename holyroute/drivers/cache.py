"""The response cache's I/O for both drivers: read a ticket's key before the call is routed, write a kept answer after.

The decisions are the core's (:mod:`holyroute.core.cache`): this module only asks the store, turns a hit into the
response the caller gets (the JSON body, or an SSE stream when the caller streams), and writes what a call's ticket
says to keep. A store that fails (Redis down or slow, a corrupt entry) is a miss: the call goes on to the upstream,
and ``holyroute.cache_failed`` says so once per spell of failures (and once per corrupt entry). Built only when a
route caches, so an unconfigured client never comes here.
"""

from __future__ import annotations

from typing import Any

import httpx2

from holyroute.boundary.cache import StoredAnswer, parse_stored, stored_bytes
from holyroute.core.cache import CacheStore
from holyroute.core.call import Call, Router
from holyroute.forking import new_lock

__all__ = ["ResponseCache"]

_JSON = ("content-type", "application/json")
_SSE = ("content-type", "text/event-stream; charset=utf-8")


class ResponseCache:
    """One client's cache: its store, and the one lookup and the one store call the drivers make."""

    __slots__ = ("_failing", "_lock", "_router", "store")

    def __init__(self, router: Router, store: CacheStore) -> None:
        self._router = router
        self.store = store
        self._failing = False  # in a spell of failures: reported once, at its start
        self._lock = new_lock()

    def lookup(self, call: Call, request: httpx2.Request) -> httpx2.Response | None:
        """The cached answer to ``call``, already accounted (its event emitted), or None: route it (the call is then
        dispatched, :meth:`Router.dispatch <holyroute.core.call.Router.dispatch>`: counted in its route's retry
        budget, its shadow copy made; a hit is neither)."""
        ticket = call.open_cache()
        if ticket is None or ticket.key is None or not ticket.read:
            return self._route(call)
        return self._answer(call, self._safely("get", self.store.get, ticket.key), request)

    async def alookup(self, call: Call, request: httpx2.Request) -> httpx2.Response | None:
        """:meth:`lookup` for the async driver: a store that does I/O (Redis) is asked from a worker thread, so that
        the event loop never waits on it."""
        ticket = call.open_cache()
        if ticket is None or ticket.key is None or not ticket.read:
            return self._route(call)
        if not self.store.blocking:
            return self._answer(call, self._safely("get", self.store.get, ticket.key), request)
        import anyio.to_thread

        raw = await anyio.to_thread.run_sync(self._safely, "get", self.store.get, ticket.key)
        return self._answer(call, raw, request)

    def _route(self, call: Call) -> httpx2.Response | None:
        """Not answered from the cache: the call goes upstream. (The router dispatched a call of a route without a
        cache when it began.)"""
        if call.route in self._router.caches:
            self._router.dispatch(call)
        return None

    def _answer(self, call: Call, raw: bytes | None, request: httpx2.Request) -> httpx2.Response | None:
        if raw is None:
            return self._route(call)
        answer = parse_stored(raw)
        if answer is None:
            self._failed("get", "a stored entry cannot be read (corrupt, or written by another version)", spell=False)
            return self._route(call)
        body = call.answer_cached(answer)
        if body is None:
            return self._route(call)
        headers = [_SSE if call.stream else _JSON, ("x-holyroute-cache", "hit")]
        return httpx2.Response(200, headers=headers, content=body, request=request)

    def keep(self, call: Call) -> None:
        """Write what the call's ticket settled to keep, if anything, once the call ended; then the call's event,
        held until now, says ``stored`` (the store kept it) or ``miss`` (it did not, or failed: one
        ``holyroute.cache_failed``)."""
        ticket = call.cache_ticket
        if ticket is None or ticket.answer is None or ticket.key is None:
            return
        answer, ticket.answer = ticket.answer, None
        call.cache_written(self._write(ticket.key, answer, ticket.ttl_s))

    async def akeep(self, call: Call) -> None:
        """:meth:`keep` for the async driver (a store that does I/O is written from a worker thread)."""
        ticket = call.cache_ticket
        if ticket is None or ticket.answer is None or ticket.key is None:
            return
        if not self.store.blocking:
            self.keep(call)
            return
        answer, ticket.answer = ticket.answer, None
        import anyio.to_thread

        # A cancel while the thread writes ends the call through Call.owned / the tap: its event then says miss.
        call.cache_written(await anyio.to_thread.run_sync(self._write, ticket.key, answer, ticket.ttl_s))

    def _write(self, key: str, answer: StoredAnswer, ttl_s: float) -> bool:
        """Whether the store kept the answer (a failure is reported and is not)."""
        return self._safely("put", self.store.put, key, stored_bytes(answer), ttl_s) is True

    def _safely(self, operation: str, method: Any, *args: Any) -> Any:
        try:
            found = method(*args)
        except Exception as error:
            self._failed(operation, f"{type(error).__name__}; answered as a miss", spell=True)
            return None
        if self._failing:
            with self._lock:
                self._failing = False
        return found

    def _failed(self, operation: str, reason: str, *, spell: bool) -> None:
        if spell:
            with self._lock:
                if self._failing:
                    return
                self._failing = True
        self._router.emit(
            "holyroute.cache_failed",
            {"operation": operation, "backend": self._router.config.cache.backend, "reason": reason},
        )

    def close(self) -> None:
        self.store.close()
