"""The rpm/tpm grant path: one round trip to the shared token buckets (the Lua script in
:mod:`holyroute.state.redis.scripts`), the lease that comes with a grant, and the tpm owed by settled calls, which
rides along with the next grant request or sync. Deciding whether to ask at all (read-only, degraded, a lease still
covers the request) is the backend's; this module only asks and books the answer."""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from holyroute.boundary.redis_url import RedisUrl
from holyroute.state.base import Leases
from holyroute.state.redis.connect import FAILURES, Client, open_async_client
from holyroute.state.redis.payloads import Keys
from holyroute.state.redis.reports import Reports
from holyroute.state.redis.scripts import ACQUIRE, AWAY_HOLD_S, DEBT, LIMITS_TTL_MS, RECONCILE

__all__ = ["Grants", "Link"]

#: How long an asyncio grant request may wait in all while its event loop is too busy to read the reply (see
#: :meth:`Grants._bounded`); an idle loop still gives up after the configured command timeout.
LAG_CAP_S = 0.5
ASYNC_FAILURES: tuple[type[BaseException], ...] = (TimeoutError, *FAILURES)  # asyncio's own timeout too


class Link(Protocol):
    """What the grant path reports to the backend about the connection."""

    failures: int

    def failed(self, error: BaseException) -> None: ...


class Grants:
    """Asks the shared buckets for grants (sync and asyncio) and keeps what each endpoint's bucket is owed."""

    def __init__(
        self,
        client: Client,
        *,
        url: RedisUrl,
        timeout: float,
        keys: Keys,
        leases: Leases,
        reports: Reports,
        link: Link,
        lock: threading.Lock,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._keys = keys
        self._leases = leases
        self._reports = reports
        self._link = link
        self._lock = lock
        self._clock = clock
        self.script = client.register_script(ACQUIRE)
        self.debt_script = client.register_script(DEBT)
        self.reconcile_script = client.register_script(RECONCILE)
        self.origin = ""  # this process, as the buckets count its grants (set by the backend)
        #: endpoint -> (rpm, requests granted to this process from its shared bucket, in all)
        self.granted: dict[str, tuple[int, int]] = {}
        #: endpoint -> (requests, tokens) its shared buckets held after this process's last grant request, and when
        self.levels: dict[str, tuple[int, int, float]] = {}
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._warm: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()  # loops whose client answered
        #: endpoint -> the grant request this event loop is waiting for (one at a time: see in_flight)
        self._flying: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Future[None]]] = (
            weakref.WeakKeyDictionary()
        )
        self.owed: dict[str, tuple[int, int]] = {}  # endpoint -> (tpm, tokens owed to its shared bucket)
        #: endpoint -> (rpm, requests given out on this process's share of ``levels`` when a grant request failed
        #: before the backend degraded; the sync thread charges them to the shared bucket: see :meth:`spare`)
        self.spared: dict[str, tuple[int, int]] = {}
        self.sending: set[str] = set()  # endpoints whose owed tokens a flush is sending now
        self.sent = threading.Condition(lock)  # notified when that flush is done

    def ask(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int, ask: tuple[int, int]) -> float | None:
        if endpoint in self.sending:
            # A flush is sending what this process owes the bucket: let it land first, or this request could find
            # the bucket short of tokens this very process gave back (bounded by the command timeout; rare).
            with self.sent:
                self.sent.wait_for(lambda: endpoint not in self.sending, timeout=max(self._timeout, 0.05))
        owed = self.take_owed(endpoint, tpm)
        try:
            args = _acquire_args(rpm, tpm, tokens, ask, owed=owed, origin=self.origin)
            reply = self.script(keys=[self._keys.limits(endpoint)], args=args)
        except FAILURES as error:
            self.owe(endpoint, tpm or 0, owed)  # sent again with the next request or sync (at least once, as spend)
            self._link.failed(error)
            return None
        except BaseException:
            self.owe(endpoint, tpm or 0, owed)
            raise
        return self._granted(endpoint, tokens, reply, rpm)

    async def aask(
        self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int, ask: tuple[int, int]
    ) -> float | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio (anyio's other backend): redis.asyncio needs asyncio, so ask from a worker thread
            loop = None
        if loop is None or endpoint in self.sending:  # (or wait there for a flush sending what is owed: see ask)
            import anyio.to_thread

            return await anyio.to_thread.run_sync(self.ask, endpoint, rpm, tpm, tokens, ask)
        script = self._async_script(loop)
        owed = self.take_owed(endpoint, tpm)
        try:
            args = _acquire_args(rpm, tpm, tokens, ask, owed=owed, origin=self.origin)
            reply = await script(keys=[self._keys.limits(endpoint)], args=args)
        except ASYNC_FAILURES as error:
            self.owe(endpoint, tpm or 0, owed)
            self._link.failed(error)
            return None
        except BaseException:  # cancelled: whether Redis applied what was owed is unknown; at least once
            self.owe(endpoint, tpm or 0, owed)
            raise
        return self._granted(endpoint, tokens, reply, rpm)

    def _async_script(self, loop: asyncio.AbstractEventLoop) -> Any:
        """The acquire script on this event loop's own client (an asyncio client cannot cross loops)."""
        found = self._async.get(loop)
        if found is None:
            # The command timeout is _bounded's: asyncio's own would count the loop's lag as Redis's.
            client = open_async_client(self._url, timeout=LAG_CAP_S, connect_timeout=LAG_CAP_S)
            found = self._async[loop] = (client, functools.partial(self._bounded, client.register_script(ACQUIRE)))
        return found[1]

    async def _bounded(self, script: Any, *, keys: list[str], args: list[int]) -> Any:
        """``script``'s reply, or ``TimeoutError`` once Redis has had the command timeout of the loop's attention.

        A loop busy with many calls (64 in flight, each a few hundred microseconds of work between two awaits) may
        get round to a reply that came back in 0.2 ms only tens of milliseconds later. asyncio's own timeout would
        count that lag as Redis being slow: it would drop the connection mid-reply, connect again for the next
        request (under the same lag, so that times out too), and soon declare Redis down on a healthy Redis. So a
        deadline that fires late, which is the loop's lag and not Redis's, is extended, up to ``LAG_CAP_S`` in all.
        """
        loop = asyncio.get_running_loop()
        # A loop's first request also connects and loads the script: the connect timeout's 50 ms at least.
        timeout = self._timeout if loop in self._warm else max(self._timeout, 0.05)
        task = loop.create_task(script(keys=keys, args=args))
        give_up = loop.time() + max(LAG_CAP_S, timeout)
        try:
            while True:
                start = loop.time()
                done, _ = await asyncio.wait((task,), timeout=timeout)
                if done:
                    reply = task.result()
                    self._warm.add(loop)
                    return reply
                now = loop.time()
                if now - start < 1.5 * timeout or now >= give_up:  # on time: Redis itself is slow
                    raise TimeoutError(f"no reply from Redis within {timeout * 1000:g} ms")
        finally:
            if not task.done():
                task.cancel()

    def in_flight(self, endpoint: str) -> asyncio.Future[None] | None:
        """Done when the grant request this event loop is waiting for on ``endpoint`` is answered; None when there is
        none (or the loop is not asyncio's)."""
        try:
            flying = self._flying.get(asyncio.get_running_loop())
        except RuntimeError:
            return None
        return None if flying is None else flying.get(endpoint)

    async def aask_alone(
        self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int, ask: tuple[int, int]
    ) -> float | None:
        """:meth:`aask`, known to :meth:`in_flight` until it is answered (whatever ends it)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio: aask asks from a worker thread
            return await self.aask(endpoint, rpm, tpm, tokens, ask)
        flying = self._flying.setdefault(loop, {})
        answered = flying[endpoint] = loop.create_future()
        try:
            return await self.aask(endpoint, rpm, tpm, tokens, ask)
        finally:
            if flying.get(endpoint) is answered:
                del flying[endpoint]
            answered.set_result(None)

    async def aclose(self) -> None:
        """Close the running event loop's client, if one was made."""
        try:
            found = self._async.pop(asyncio.get_running_loop(), None)
        except RuntimeError:  # trio: no asyncio client was made
            found = None
        if found is not None:
            await found[0].aclose()

    def owe(self, endpoint: str, tpm: int, tokens: int) -> int:
        """Add ``tokens`` to what the endpoint's shared bucket is owed; the total now owed. More than the bucket's
        span (``2 * tpm``) either way could never apply, so the total stays within it."""
        if tpm <= 0 or not tokens:
            return 0
        with self._lock:
            total = self.owed.get(endpoint, (tpm, 0))[1] + tokens
            total = min(max(total, -2 * tpm), 2 * tpm)
            self.owed[endpoint] = (tpm, total)
        return total

    def take_owed(self, endpoint: str, tpm: int | None) -> int:
        """What the endpoint's shared bucket is owed, handed to the grant request about to be sent."""
        if not tpm or not self.owed:
            return 0
        with self._lock:
            found = self.owed.pop(endpoint, None)
        return found[1] if found is not None else 0

    def _granted(self, endpoint: str, tokens: int, reply: Any, rpm: int | None = None) -> float | None:
        self._link.failures = 0
        try:
            wait_ms, requests, granted_tokens, left_requests, left_tokens = (int(value) for value in reply)
        except (TypeError, ValueError):
            self._reports.invalid(self._keys.limits(endpoint), "the rate-limit script's reply is not five integers")
            return None  # decide locally, as when Redis cannot answer
        self.levels[endpoint] = (left_requests, left_tokens, self._clock())
        if wait_ms > 0:
            return min(wait_ms, 60_000) / 1000.0  # a bucket refills completely within 60 s
        if rpm and requests > 0:
            with self._lock:
                self.granted[endpoint] = (rpm, self.granted.get(endpoint, (rpm, 0))[1] + requests)
        self._leases.granted(endpoint, max(requests, 0), max(granted_tokens, 0), tokens)
        return 0.0

    def levels_at(
        self, now: float, limits: Callable[[str], tuple[int | None, int | None]]
    ) -> dict[str, tuple[float | None, float | None]]:
        """What each endpoint's shared buckets hold by ``now``, as far as this process knows: what they held after
        its last grant request, refilled since at the limit's rate (the others' use since is unknown)."""
        found: dict[str, tuple[float | None, float | None]] = {}
        for endpoint, (requests, tokens, at) in list(self.levels.items()):
            rpm, tpm = limits(endpoint)
            elapsed = max(0.0, now - at)
            found[endpoint] = (
                min(rpm, requests + elapsed * rpm / 60) if rpm else None,
                min(tpm, tokens + elapsed * tpm / 60) if tpm else None,
            )
        return found

    def charge(
        self,
        endpoint: str,
        rpm: int | None,
        tpm: int | None,
        requests: int,
        tokens: int,
        *,
        away: int | None = None,
        away_s: float = 0.0,
    ) -> None:
        """Charge the shared buckets with what this process gave out on its own while Redis was away: the tokens
        with its next request or sync (as a settled call's), the requests now (raises what Redis raises).

        ``away`` (coming back from an outage of ``away_s`` seconds): the requests the other processes are presumed
        to have given out on their own meanwhile. The first process back holds them out of the rpm bucket for the
        others to claim as they come back (see ``DEBT``); a later one (a hold made during its outage) charges its
        ``requests`` against that hold."""
        if tpm and tokens:
            self.owe(endpoint, tpm, -tokens)
        if rpm and (requests or away is not None):
            held = -1 if away is None else max(0, away)
            args: list[int | str] = [rpm, requests, LIMITS_TTL_MS, held, f"{max(0.0, away_s):.3f}", AWAY_HOLD_S]
            self.debt_script(keys=[self._keys.limits(endpoint)], args=args)

    def spare(self, endpoint: str, rpm: int | None, processes: int, now: float) -> float | None:
        """A grant request failed, or its reply was unreadable, and the backend is not (yet) degraded: whether this
        process's share of what the shared rpm bucket last held (refilled since, less what it gave out so already)
        has room for one request. None: it has (counted, to be charged to the bucket by the next sync; the caller's
        local buckets then decide as when degraded); else the seconds until it has. Without this, every such failure
        took from the full-size local bucket, idle while shared, and was never charged."""
        if not rpm:
            return None
        share = max(1, processes)
        found = self.levels.get(endpoint)
        level = rpm if found is None else min(rpm, max(0, found[0]) + max(0.0, now - found[2]) * rpm / 60)
        with self._lock:
            spared = self.spared.get(endpoint, (rpm, 0))[1]
            room = level / share - spared
            if room >= 1:
                self.spared[endpoint] = (rpm, spared + 1)
                return None
        return max(0.001, (1 - room) * 60 * share / rpm)

    def take_spared(self) -> dict[str, tuple[int, int]]:
        """The requests :meth:`spare` gave out, handed to the sync flush about to charge them."""
        with self._lock:
            spared, self.spared = self.spared, {}
        return spared

    def put_spared(self, spared: dict[str, tuple[int, int]]) -> None:
        """A flush failed: what it was to charge is charged with the next one."""
        with self._lock:
            for endpoint, (rpm, requests) in spared.items():
                self.spared[endpoint] = (rpm, self.spared.get(endpoint, (rpm, 0))[1] + requests)

    def spared_levels(
        self, levels: dict[str, tuple[float | None, float | None]], processes: int
    ) -> dict[str, tuple[float | None, float | None]]:
        """``levels`` (:meth:`levels_at`) less what :meth:`spare` gave out and no sync has charged yet, as the
        shared bucket would hold it (each request spared came out of this process's share, one in ``processes``)."""
        with self._lock:
            spared = dict(self.spared)
        found = dict(levels)
        for endpoint, (_rpm, requests) in spared.items():
            held = found.get(endpoint)
            if held is not None and held[0] is not None:
                found[endpoint] = (max(0.0, held[0] - requests * max(1, processes)), held[1])
        return found

    def presumed_away(self, now: float, rpm: int, endpoint: str, processes: int) -> int:
        """The requests the other ``processes - 1`` processes may have given out on their own from ``endpoint``'s
        rpm limit during an outage ending ``now``: their local shares of what the shared bucket held when this one
        last heard from it, refilled since (each started from its share of that and refilled at its share of the
        rate). Nothing when alone, or when this process never asked for that bucket."""
        found = self.levels.get(endpoint)
        if processes <= 1 or found is None:
            return 0
        requests, _tokens, at = found
        level = min(rpm, max(0, requests) + max(0.0, now - at) * rpm / 60)
        return math.ceil(level * (processes - 1) / processes)

    def reconcile(self, processes: int = 1) -> int:
        """After a failover or an outage: tell each shared rpm bucket how many requests it granted this process in
        all; whatever its master does not know of (granted by a master replaced before passing it on) is taken now.
        The first of the ``processes`` to find some missing also holds a like share for each of the others, whose
        last grants the old master lost too, until they tell the bucket theirs (the RECONCILE script). Returns this
        process's requests taken. Raises what Redis raises."""
        with self._lock:
            granted = dict(self.granted)
        taken = 0
        for endpoint, (rpm, total) in granted.items():
            found = self.reconcile_script(
                keys=[self._keys.limits(endpoint)],
                args=[rpm, self.origin, total, LIMITS_TTL_MS, max(1, processes), AWAY_HOLD_S],
            )
            taken += int(found) if isinstance(found, int) else 0
        return taken


def _acquire_args(
    rpm: int | None, tpm: int | None, tokens: int, ask: tuple[int, int], *, owed: int, origin: str
) -> list[int | str]:
    return [rpm or 0, tpm or 0, tokens, LIMITS_TTL_MS, ask[0], ask[1], owed, origin, AWAY_HOLD_S]
