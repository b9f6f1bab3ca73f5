"""The two drivers: ``httpx2`` transports that carry out what the core decides.

:class:`Transport` (sync) and :class:`AsyncTransport` (async) each ask the :class:`~holyroute.core.call.Router` whether
a request is routed; a request that is not goes to the inner transport untouched. For a routed one they loop over
the call's steps: send an attempt through the inner transport, wait, hand back an answer, or raise. They decide
nothing themselves, so the two cannot drift apart; what they share is in the helpers at the bottom. Each wraps a
call's steps in the same owner, :meth:`Call.owned <holyroute.core.call.Call.owned>`: whatever escapes (a cancellation, a
timeout of the caller's, ``KeyboardInterrupt``, a bug in an inner transport) ends the open attempt and emits the call's
one ``holyroute.request`` before it propagates unchanged; the stream taps do the same for a body.

When every attempt failed without an HTTP answer, the caller gets the error its client family expects: for the
OpenAI SDK (recognised by its ``x-stainless-*`` headers) ``openai.APITimeoutError`` / ``APIConnectionError``, which the
SDK passes on without retrying; otherwise the last ``httpx2`` error. A failed answer goes back unchanged with
``x-should-retry: false``. Either way the SDK's own retries do not multiply holyroute's attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx2

from holyroute.boundary.parse import StreamDecoder, decode_content
from holyroute.config.schema import Config, load_config
from holyroute.core.call import Call, EventSink, QualityCheck, Router
from holyroute.core.steps import Accepted, Acquire, GiveUp, Respond, Send, ShadowDropped, Wait
from holyroute.drivers.compat import attempt_request, header_view, path_and_query, restore_read_timeout
from holyroute.drivers.stream import AsyncTap, BodyWatch, SyncTap
from holyroute.forking import after_fork_in_child, new_lock

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from holyroute.drivers.cache import ResponseCache

__all__ = ["DEFAULT_LIMITS", "DEFAULT_TIMEOUT", "AsyncTransport", "Transport", "async_client", "client"]

#: The OpenAI SDK's own connection limits and timeouts, so holyroute's client behaves like the SDK's default one.
DEFAULT_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)
DEFAULT_TIMEOUT = httpx2.Timeout(timeout=600.0, connect=5.0)

#: Shadow copies waiting or running per transport; beyond this they are dropped, never queued without bound.
_MAX_SHADOWS_PENDING = 64

#: What an attempt may raise that means "this endpoint did not answer": fail over.
_ATTEMPT_ERRORS: tuple[type[BaseException], ...] = (httpx2.TransportError, ssl.SSLError)

ConfigSource = str | os.PathLike[str] | Mapping[str, Any] | Config | None


def _router(
    config: ConfigSource,
    router: Router | None,
    sinks: Sequence[EventSink] | None,
    quality: QualityCheck | None,
    *,
    log: bool,
) -> Router:
    if router is not None:
        return router
    return Router(load_config(config), sinks=sinks, log=log, quality=quality)


class Transport(httpx2.BaseTransport):
    """Routes, fails over and costs requests to configured model aliases; passes everything else through.

    >>> transport = Transport({"endpoints": {"local": {"base_url": "http://127.0.0.1:8000/v1"}},
    ...                        "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["local"]}]}}})
    >>> transport.close()
    """

    def __init__(
        self,
        config: ConfigSource = None,
        *,
        transport: httpx2.BaseTransport | None = None,
        router: Router | None = None,
        sinks: Sequence[EventSink] | None = None,
        log: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        quality: QualityCheck | None = None,
    ) -> None:
        self.router = _router(config, router, sinks, quality, log=log)
        self._owns_router = router is None  # a router passed in may serve other transports: its owner closes it
        self._inner = transport if transport is not None else httpx2.HTTPTransport(limits=DEFAULT_LIMITS)
        #: How to build the connection pool again in a forked child, when this transport built it (client() sets
        #: its own); None for a transport given: the caller's to renew.
        self._new_pool: Callable[[], httpx2.BaseTransport] | None = (
            None if transport is not None else functools.partial(httpx2.HTTPTransport, limits=DEFAULT_LIMITS)
        )
        self._forked = False  # a forked child's copy, still on its parent's pool (see _renew_pool)
        self._pool_lock = new_lock()
        self._sleep = sleep
        self._shadows: ThreadPoolExecutor | None = None
        self._shadows_pending = 0
        self._shadows_lock = new_lock()
        self._closed = False
        # In a forked child the pool is renewed at the top of handle_request, before _begin runs the work that
        # starts the health checker again (Router.on_next_call): its first probe goes through the new pool.
        after_fork_in_child(self, type(self)._in_forked_child)
        self._checker = None
        if self.router.probing:  # active health checks: one background thread, stopped by close()
            from holyroute.drivers.probe import HealthChecker

            self._checker = HealthChecker(self.router, self._inner)
            self._checker.start()
        self._cache = _response_cache(self.router)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if self._forked:  # a forked child's first requests, whatever they are: a pool of its own first
            self._renew_pool()
        begun = _begin(self.router, request)
        if begun is None:
            return self._inner.handle_request(request)
        call, headers = begun
        if self._cache is not None:  # a hit sends nothing upstream: its call has no shadow (Router.dispatch)
            with call.owned():
                cached = self._cache.lookup(call, request)
            if cached is not None:
                return cached
        if call.shadow is not None:
            self._mirror(request, call.shadow)
        with call.owned():  # _drive's block, inline: one call less on every routed call
            return self._steps(request, call, headers)

    def _in_forked_child(self) -> None:
        """This transport's copy in a forked child (``holyroute.forking``): the shadow pool's threads, and the copies
        they ran or had queued, were the parent's. The child's first shadow copy starts a pool of its own."""
        if self._closed:  # closed in the parent: its shadow copies stay off in the child
            return
        self._shadows = None
        self._shadows_pending = 0
        # The pool's open connections are the parent's sockets: the child's first request builds one of its own.
        self._forked = self._new_pool is not None

    def _renew_pool(self) -> None:
        """A forked child's connection pool of its own, for its calls and its health checks, built by its first
        request; requests made meanwhile wait for it. The parent's is dropped, not closed (closing takes a lock of the
        pool's that a parent's thread may have held, and what happens to a socket both processes hold is the
        parent's business). A pool that cannot be built (a certificate file gone since) leaves the child on its
        parent's, as before, with one ``holyroute.pool_renew_failed``."""
        failed: Exception | None = None
        with self._pool_lock:
            new_pool = self._new_pool
            if not self._forked or new_pool is None:
                return
            try:
                self._inner = pool = new_pool()
                if self._checker is not None:
                    self._checker.use(pool)
            except Exception as exc:
                failed = exc
            self._forked = False
        if failed is not None:  # emitted outside the lock: no sink runs while holyroute holds a plain lock
            reason = "a forked process could not build a connection pool of its own; it uses its parent's"
            self.router.emit("holyroute.pool_renew_failed", {"error": type(failed).__name__, "reason": reason})

    def _mirror(self, request: httpx2.Request, shadow: Call) -> None:
        """Run the shadow copy on a small background pool; when the pool is saturated or shut down, the copy is
        dropped (its one event says ``cancelled: ShadowDropped``). Never raises: the caller's call does not depend
        on its shadow."""
        with self._shadows_lock:
            full = self._shadows_pending >= _MAX_SHADOWS_PENDING
            if not full:
                self._shadows_pending += 1
                if self._shadows is None:  # the first shadow copy: the pool module is imported only then
                    from concurrent.futures import ThreadPoolExecutor

                    self._shadows = ThreadPoolExecutor(max_workers=4, thread_name_prefix="holyroute-shadow")
            pool = self._shadows
        if full or pool is None:
            shadow.abandon(ShadowDropped())  # it still ends, with its one event (emitted outside the lock)
            return
        try:
            future = pool.submit(self._run_shadow, request, shadow)
        except RuntimeError:  # closed meanwhile
            with self._shadows_lock:
                self._shadows_pending -= 1
            shadow.abandon(ShadowDropped())
            return

        def ended(done: Future[None]) -> None:
            if done.cancelled():  # close() cancelled it before it started: it still has its one event
                with self._shadows_lock:
                    self._shadows_pending -= 1
                shadow.abandon(asyncio.CancelledError())

        future.add_done_callback(ended)

    def _run_shadow(self, request: httpx2.Request, shadow: Call) -> None:
        try:
            response = self._drive(request, shadow)
            try:
                response.read()  # a stream's tap reports at its end
            finally:
                response.close()
        except Exception:
            pass  # the shadow's own event records what happened; the caller never sees a shadow's error
        finally:
            with self._shadows_lock:
                self._shadows_pending -= 1

    def _drive(self, request: httpx2.Request, call: Call) -> httpx2.Response:
        with call.owned():  # whatever escapes (a cancel, KeyboardInterrupt, a bug) ends the attempt and the call
            return self._steps(request, call, None)

    def _steps(self, request: httpx2.Request, call: Call, headers: Mapping[str, str] | None) -> httpx2.Response:
        while True:
            step = call.next_step()
            if isinstance(step, Send):
                sent, body_read = _attempt(request, step, headers)
                try:
                    response = _in_memory(self._inner.handle_request(sent))
                except _ATTEMPT_ERRORS as error:
                    call.on_error(error, timeout=isinstance(error, httpx2.TimeoutException))
                    continue
                accepted = call.on_response(response.status_code, header_view(response.headers))
                if step.headers_timeout is not None:
                    restore_read_timeout(sent, body_read)
                if accepted is not None and accepted.event_stream:
                    assert isinstance(response.stream, httpx2.SyncByteStream)
                    response.stream = SyncTap(response.stream, _watch(response, call, accepted, self._cache))
                    return response
                stream = response.stream
                assert isinstance(stream, httpx2.SyncByteStream)
                try:
                    raw = b"".join(stream)
                except _ATTEMPT_ERRORS as error:
                    call.on_error(error, timeout=isinstance(error, httpx2.TimeoutException))
                    continue
                finally:
                    stream.close()  # the upstream's stream: the connection goes back to the pool
                if _judged(call, accepted, response, raw):
                    if self._cache is not None:
                        self._cache.keep(call)
                    return response
            elif isinstance(step, Acquire):
                call.on_acquired(self.router.state.acquire(step.endpoint, step.rpm, step.tpm, step.tokens))
            elif isinstance(step, Wait):
                self._sleep(step.seconds)
            elif isinstance(step, Respond):
                return _respond(request, step)
            else:
                raise _give_up(request, step)

    def close(self) -> None:
        self._closed = True
        if self._cache is not None:
            self._cache.close()
        if self._checker is not None:
            self._checker.close()
        if self._shadows is not None:
            self._shadows.shutdown(wait=False, cancel_futures=True)
        if self._owns_router:
            self.router.close()
        if not self._forked:  # a forked child's inherited pool is its parent's to close (see _renew_pool)
            self._inner.close()


class AsyncTransport(httpx2.AsyncBaseTransport):
    """The async twin of :class:`Transport`; ``sleep`` defaults to ``anyio.sleep`` (asyncio and trio)."""

    def __init__(
        self,
        config: ConfigSource = None,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        router: Router | None = None,
        sinks: Sequence[EventSink] | None = None,
        log: bool = True,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        quality: QualityCheck | None = None,
    ) -> None:
        self.router = _router(config, router, sinks, quality, log=log)
        self._owns_router = router is None
        self._inner = transport if transport is not None else httpx2.AsyncHTTPTransport(limits=DEFAULT_LIMITS)
        import anyio

        self._sleep = sleep if sleep is not None else anyio.sleep
        # TLS failures can still escape httpx2's async transport unmapped (the OpenAI SDK catches these too).
        self._errors: tuple[type[BaseException], ...] = (*_ATTEMPT_ERRORS, anyio.EndOfStream)
        self._checker = None
        if self.router.probing:  # active health checks: one task, started inside the event loop on first use
            from holyroute.drivers.probe import AsyncHealthChecker

            self._checker = AsyncHealthChecker(self.router, self._inner)
        self._shadows = _ShadowTasks()
        self._cache = _response_cache(self.router)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self._checker is not None:
            self._checker.ensure_started()
        begun = _begin(self.router, request)
        if begun is None:
            return await self._inner.handle_async_request(request)
        call, headers = begun
        if self._cache is not None:  # a hit sends nothing upstream: its call has no shadow (Router.dispatch)
            with call.owned():
                cached = await self._cache.alookup(call, request)
            if cached is not None:
                return cached
        if call.shadow is not None:
            shadow = call.shadow
            # A copy cancelled before it ever ran still ends (its one event says cancelled); abandon() is idempotent.
            spawned = self._shadows.spawn(
                functools.partial(self._run_shadow, request, shadow),
                functools.partial(shadow.abandon, asyncio.CancelledError()),
            )
            if not spawned:  # too many in flight, closed, or no loop to run it on: it still ends, with its event
                shadow.abandon(ShadowDropped())
        with call.owned():  # _drive's block, inline: one coroutine less on every routed call
            return await self._steps(request, call, headers)

    async def _run_shadow(self, request: httpx2.Request, shadow: Call) -> None:
        response = await self._drive(request, shadow)
        try:
            await response.aread()  # a stream's tap reports at its end
        finally:
            await response.aclose()

    async def _drive(self, request: httpx2.Request, call: Call) -> httpx2.Response:
        with call.owned():  # the same owner as the sync driver's: cancellation included
            return await self._steps(request, call, None)

    async def _steps(self, request: httpx2.Request, call: Call, headers: Mapping[str, str] | None) -> httpx2.Response:
        while True:
            step = call.next_step()
            if isinstance(step, Send):
                sent, body_read = _attempt(request, step, headers)
                try:
                    response = _in_memory(await self._inner.handle_async_request(sent))
                except self._errors as error:
                    call.on_error(error, timeout=isinstance(error, httpx2.TimeoutException))
                    continue
                accepted = call.on_response(response.status_code, header_view(response.headers))
                if step.headers_timeout is not None:
                    restore_read_timeout(sent, body_read)
                if accepted is not None and accepted.event_stream:
                    assert isinstance(response.stream, httpx2.AsyncByteStream)
                    response.stream = AsyncTap(response.stream, _watch(response, call, accepted, self._cache))
                    return response
                stream = response.stream
                assert isinstance(stream, httpx2.AsyncByteStream)
                try:
                    raw = b"".join([chunk async for chunk in stream])
                except self._errors as error:
                    call.on_error(error, timeout=isinstance(error, httpx2.TimeoutException))
                    continue
                finally:
                    await stream.aclose()
                if _judged(call, accepted, response, raw):
                    if self._cache is not None:
                        await self._cache.akeep(call)
                    return response
            elif isinstance(step, Acquire):
                call.on_acquired(await self.router.state.aacquire(step.endpoint, step.rpm, step.tpm, step.tokens))
            elif isinstance(step, Wait):
                await self._sleep(step.seconds)
            elif isinstance(step, Respond):
                return _respond(request, step)
            else:
                raise _give_up(request, step)

    async def aclose(self) -> None:
        if self._cache is not None:
            self._cache.close()
        if self._checker is not None:
            await self._checker.aclose()
        await self._shadows.aclose()
        if self._owns_router:
            await self.router.aclose()
        await self._inner.aclose()


#: Keyword arguments that configure a connection pool, not a client: they go to the inner transport. (Given to
#: ``httpx2.Client`` next to ``transport=``, they would be silently ignored.)
TRANSPORT_OPTIONS = frozenset(
    {"verify", "cert", "trust_env", "http1", "http2", "limits", "proxy", "uds", "local_address", "retries"}
)


def _split_options(kwargs: dict[str, Any], transport: object) -> dict[str, Any]:
    options = {name: kwargs.pop(name) for name in list(kwargs) if name in TRANSPORT_OPTIONS}
    if options and transport is not None:
        raise TypeError(
            f"holyroute.client(): {', '.join(sorted(options))} configure the inner transport; "
            "pass them to the transport you give as transport=..., or drop transport=..."
        )
    options.setdefault("limits", DEFAULT_LIMITS)
    kwargs.setdefault("timeout", DEFAULT_TIMEOUT)
    return options


def client(
    config: ConfigSource = None,
    *,
    transport: httpx2.BaseTransport | None = None,
    sinks: Sequence[EventSink] | None = None,
    log: bool = True,
    **kwargs: Any,
) -> httpx2.Client:
    """An ``httpx2.Client`` for ``OpenAI(http_client=...)``, with the SDK's connection limits and timeouts.

    ``config`` is a YAML/TOML path, a dict or a :class:`Config` (default: ``$HOLYROUTE_CONFIG`` or
    ``./holyroute.yaml``). ``transport`` is the inner transport holyroute sends through (default: httpx2's).
    Every event goes to structlog's ``holyroute`` logger (the event log ``holyroute report`` and ``holyroute
    dashboard`` read) and also to each of ``sinks``, called as ``sink(name, fields)``; add more later with
    ``router_of(client).add_sink(...)``. ``log=False`` turns the structlog event off, leaving only ``sinks``.
    Pool options (``verify``, ``cert``, ``proxy``, ``limits``, ``http2``, ...) configure that default inner
    transport; every other keyword argument goes to ``httpx2.Client``.
    """
    options = _split_options(kwargs, transport)
    inner = transport if transport is not None else httpx2.HTTPTransport(**options)
    routed = Transport(config, transport=inner, sinks=sinks, log=log)
    if transport is None:  # the pool is holyroute's: a forked child builds its own, with the same options
        routed._new_pool = functools.partial(httpx2.HTTPTransport, **options)
    return httpx2.Client(transport=routed, **kwargs)


def async_client(
    config: ConfigSource = None,
    *,
    transport: httpx2.AsyncBaseTransport | None = None,
    sinks: Sequence[EventSink] | None = None,
    log: bool = True,
    **kwargs: Any,
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` for ``AsyncOpenAI(http_client=...)``; see :func:`client`."""
    options = _split_options(kwargs, transport)
    inner = transport if transport is not None else httpx2.AsyncHTTPTransport(**options)
    return httpx2.AsyncClient(transport=AsyncTransport(config, transport=inner, sinks=sinks, log=log), **kwargs)


def router_of(target: Router | Transport | AsyncTransport | httpx2.Client | httpx2.AsyncClient) -> Router:
    """The :class:`Router` behind a client from :func:`client` / :func:`async_client`, a transport or a router."""
    if isinstance(target, Router):
        return target
    if isinstance(target, Transport | AsyncTransport):
        return target.router
    inner = getattr(target, "_transport", None)  # httpx2's client keeps its transport here
    if isinstance(inner, Transport | AsyncTransport):
        return inner.router
    raise TypeError(
        f"router_of: expected a holyroute client, transport or Router, got {type(target).__name__}; "
        "build the client with holyroute.client(...) or holyroute.async_client(...)"
    )


class _ShadowTasks:
    """The async driver's shadow copies, owned: started as tasks of whichever event loop runs the call (asyncio or
    trio), at most ``_MAX_SHADOWS_PENDING`` at once (beyond that a copy is dropped), and all cancelled and awaited
    by :meth:`aclose`. Starting one never raises into the caller's call."""

    __slots__ = ("_asyncio", "_closed", "_trio")

    def __init__(self) -> None:
        self._asyncio: set[asyncio.Task[None]] = set()
        self._trio: dict[object, Any] = {}  # trio.CancelScope -> trio.Event (set when the task has ended)
        self._closed = False

    def __len__(self) -> int:
        return len(self._asyncio) + len(self._trio)

    def spawn(self, run: Callable[[], Awaitable[None]], ended: Callable[[], None]) -> bool:
        """Start ``run()`` in the background; False when it was dropped (too many, closed, or an unknown loop).
        ``ended()`` runs when the task is over whatever ended it, even a cancel before it ever ran."""
        if self._closed or len(self) >= _MAX_SHADOWS_PENDING:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: trio (if it is running), else nothing to attach a task to
            if "trio" not in sys.modules:
                return False
            try:
                return self._spawn_trio(run, ended)
            except RuntimeError:  # trio is shutting down: no new system task
                return False
        task = loop.create_task(_shadow(run))
        self._asyncio.add(task)  # a reference keeps the task alive; it removes itself when done

        def done(task: asyncio.Task[None]) -> None:
            self._asyncio.discard(task)
            ended()

        task.add_done_callback(done)
        return True

    def _spawn_trio(self, run: Callable[[], Awaitable[None]], over: Callable[[], None]) -> bool:
        import trio

        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            return False
        scope = trio.CancelScope()
        ended = trio.Event()

        async def task() -> None:
            try:
                with scope:
                    await _shadow(run)
            finally:
                ended.set()
                self._trio.pop(scope, None)
                over()

        self._trio[scope] = ended
        # A system task: it outlives the caller's own task (and its cancel scopes), as a shadow must; aclose()
        # or the end of trio.run() cancels it.
        trio.lowlevel.spawn_system_task(task, name="holyroute-shadow")
        return True

    async def aclose(self) -> None:
        """Cancel every shadow still running and wait for it to end (its event says ``cancelled``). A task left
        from an event loop that is not the running one is cancelled there, not awaited."""
        self._closed = True
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        mine = []
        for one in list(self._asyncio):
            if one.get_loop() is running:
                one.cancel()
                mine.append(one)
            else:
                with contextlib.suppress(RuntimeError):  # that loop is closed already
                    one.get_loop().call_soon_threadsafe(one.cancel)
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)
        if running is None and self._trio:
            waiting = list(self._trio.items())
            for scope, _ in waiting:
                scope.cancel()  # type: ignore[attr-defined]
            for _, ended in waiting:
                await ended.wait()


async def _shadow(run: Callable[[], Awaitable[None]]) -> None:
    # The shadow's own event records what happened; the caller never sees a shadow's error.
    with contextlib.suppress(Exception):
        await run()


# ---- what both drivers share: translating between httpx2 objects and the core's plain data ---------------------


def _begin(router: Router, request: httpx2.Request) -> tuple[Call, Mapping[str, str]] | None:
    """The routed call for ``request`` and the view of its headers the core reads (its attempts copy the headers
    with the names that view listed); ``None`` for a request holyroute passes through."""
    try:
        body = request.content
    except httpx2.RequestNotRead:
        return None  # a streamed upload: not a model call holyroute routes
    path, query = path_and_query(request.url)
    timeout = request.extensions.get("timeout")
    read = timeout.get("read") if isinstance(timeout, dict) else None
    # A view the core reads a few request headers from (pin, rules, tags, ceilings, sticky), decoding only those.
    headers = header_view(request.headers)
    call = router.begin(request.method, path, query, headers, body, timeout=read)
    return None if call is None else (call, headers)


def _attempt(
    request: httpx2.Request, step: Send, headers: Mapping[str, str] | None
) -> tuple[httpx2.Request, float | None]:
    """The request for one attempt, and the read timeout its body should get once the headers are in. ``headers``:
    the view of the request's headers made when the call began (a shadow copy, which runs later, has none)."""
    caller: Mapping[str, Any] = request.extensions
    body_read: float | None = None
    bound, headers_bound = step.timeout, step.headers_timeout
    if bound is None and headers_bound is None:
        # The attempt's own dict (the caller's request keeps its own). A nested "timeout" dict is shared with the
        # caller's: safe, since only an attempt with a headers bound has it changed (restore_read_timeout), and
        # such an attempt gets a new one below.
        extensions = dict(caller)
    else:
        timeout = caller.get("timeout")
        limits = dict(timeout) if isinstance(timeout, dict) else {}
        if bound is not None:
            # Each phase within the attempt's bound (written out: this runs on every attempt).
            current = limits.get("connect")
            limits["connect"] = bound if current is None or current > bound else current
            current = limits.get("read")
            limits["read"] = bound if current is None or current > bound else current
            current = limits.get("write")
            limits["write"] = bound if current is None or current > bound else current
            current = limits.get("pool")
            limits["pool"] = bound if current is None or current > bound else current
        if headers_bound is not None:
            body_read = current = limits.get("read")
            limits["read"] = headers_bound if current is None or current > headers_bound else current
        extensions = {**caller, "timeout": limits}
    sent = attempt_request(
        request,
        step.url,
        drop=step.drop,
        add=step.headers,
        body=step.body,
        extensions=extensions,
        listed_by=headers,
    )
    return sent, body_read


def _in_memory(response: httpx2.Response) -> httpx2.Response:
    """An answer some inner transports build already read (test doubles), as an unread one the tap can watch."""
    if not response.is_stream_consumed:
        return response
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in ("content-encoding", "content-length")]
    return httpx2.Response(
        response.status_code,
        headers=headers,
        stream=httpx2.ByteStream(response.content),
        extensions=response.extensions,
    )


def _judged(call: Call, accepted: Accepted | None, response: httpx2.Response, raw: bytes) -> bool:
    """Hand a whole non-stream body to the core. True: ``response`` now carries it, ready for the caller."""
    # Read once already, into the header view the core judged (httpx2's Headers.get re-normalises on every call).
    encoding = accepted.content_encoding if accepted is not None else response.headers.get("content-encoding")
    body = raw
    if encoding is not None:
        # Total: every coding httpx2 decodes, any case; an undecodable body is judged as no JSON (fails over).
        decoded = decode_content(raw, encoding)
        body = decoded if decoded is not None else b""
        del response.headers["content-encoding"]  # the caller gets the decoded body (or none)
        response.headers.pop("content-length", None)
    if accepted is None:
        call.on_rejected_body(body)
        return False
    if not call.on_body(body):
        return False
    response.stream = httpx2.ByteStream(body)
    return True


def _response_cache(router: Router) -> ResponseCache | None:
    """The client's response cache, only when a route caches: otherwise the drivers never look."""
    if not router.caches:
        return None
    from holyroute.drivers.cache import ResponseCache
    from holyroute.state.cache.factory import open_cache

    return ResponseCache(router, open_cache(router.config))


def _watch(response: httpx2.Response, call: Call, accepted: Accepted, cache: ResponseCache | None) -> BodyWatch:
    if accepted.content_encoding is None:  # the common stream: its headers stay as they are (or lose a length)
        if accepted.sized and accepted.hide_usage_chunk:
            del response.headers["content-length"]  # one event will be left out
        return BodyWatch(call, accepted, None, cache)
    decoder = StreamDecoder.build(accepted.content_encoding)
    if decoder is not None:  # the caller gets the events decoded, as the usage scanner reads them
        del response.headers["content-encoding"]
    if accepted.sized and (decoder is not None or accepted.hide_usage_chunk):
        del response.headers["content-length"]
    return BodyWatch(call, accepted, decoder, cache)


def _respond(request: httpx2.Request, step: Respond) -> httpx2.Response:
    return httpx2.Response(step.status, headers=list(step.headers), content=step.body, request=request)


def _give_up(request: httpx2.Request, step: GiveUp) -> BaseException:
    error = step.error
    if "x-stainless-retry-count" in request.headers:
        # The OpenAI SDK passes its own errors through without retrying: no multiplication of attempts.
        import openai

        sdk_error: BaseException
        if step.timeout:
            sdk_error = openai.APITimeoutError(request=request)
        else:
            sdk_error = openai.APIConnectionError(message=step.summary, request=request)
        sdk_error.__cause__ = error
        return sdk_error
    error.add_note(step.summary)
    return error
