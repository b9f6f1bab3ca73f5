"""The decision core: plan a call, judge each attempt, decide the next step, account for the result.

Sans-I/O in the manner of h11 and tenacity's ``iter()``: a :class:`Router` turns a request description into a
:class:`Call`, and a call answers ``next_step()`` with what to do next: :class:`Send` an attempt, :class:`Wait`,
:class:`Respond` with a finished answer, or :class:`GiveUp` with the last transport error. The transports
(``drivers/transport.py``) perform exactly those steps and report back with ``on_response`` / ``on_error``. Every
rule about where traffic goes lives here: the split and stickiness (``rollout/split.py``), cooldowns
(``core/health.py``), the retry schedule
(tenacity's wait objects), fallbacks, the attempt bound, and the events that explain each decision.

Failover never crosses to another arm of the same split (that would corrupt the split): it walks the chosen arm's
endpoints in order, then the fallback aliases in order. This module never performs I/O, never sleeps, and reads time
only from the clocks it is given; it never logs a key or prompt text.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from holyroute.boundary.parse import RequestView, clamp_tokens, finish_reason, named_alias, read_request
from holyroute.config.catalogue import catalogue_model
from holyroute.core.attempts import _INJECT_USAGE_APIS
from holyroute.core.call_state import QualityCheck
from holyroute.core.context import (
    TokenEncoder,
    tiktoken_encoding,
)
from holyroute.core.events import EventSink, structlog_sink
from holyroute.core.health import HeaderLookup, HealthBook, Transition
from holyroute.core.plan import (
    DROPPED_HEADERS,
    OPERATIONS,
    Arm,
    Leg,
    RoutePlan,
    Upstream,
    compile_routes,
    operation_of,
    sticky_key,
)
from holyroute.core.ports import HealthChange, StateBackend, open_state
from holyroute.core.retry_budget import RetryBudget
from holyroute.core.sending import Sending
from holyroute.core.spend import SpendBudgets
from holyroute.core.steps import Accepted, Acquire, GiveUp, Respond, Send, Step, Wait
from holyroute.forking import after_fork_in_child, new_lock

if TYPE_CHECKING:
    from holyroute.boundary.cache import StoredAnswer
    from holyroute.core.alerts import Alerts
    from holyroute.core.cache import CachePolicy, CacheTicket
    from holyroute.core.rollouts import Rollouts
from holyroute.config.schema import Config

__all__ = [
    "OPERATIONS",
    "Accepted",
    "Acquire",
    "Call",
    "EventSink",
    "GiveUp",
    "QualityCheck",
    "Respond",
    "Router",
    "Send",
    "Wait",
]


class Router:
    """Compiled configuration plus shared state (health, budgets). One per client; safe to share across threads.

    ``clock`` is monotonic seconds (durations, cooldowns), ``wall_clock`` is Unix time (HTTP-date headers), ``rng``
    draws non-sticky splits. Every event goes to structlog's ``holyroute`` logger (the event log ``holyroute report``
    and ``holyroute dashboard`` read) and to each of ``sinks`` too; ``log=False`` turns the structlog event off, so
    that only ``sinks`` receive events.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        sinks: Sequence[EventSink] | None = None,
        log: bool = True,
        quality: QualityCheck | None = None,
        state: StateBackend | None = None,
    ) -> None:
        # Over 60 lines with its 12-line signature: the body wires the router's parts in the order they depend on
        # each other; the parts with choices of their own are built by _retry_budget and _open_rollouts.
        self.config = config
        self.quality = quality
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        limits = {name: (e.rpm, e.tpm) for name, e in config.endpoints.items() if e.rpm or e.tpm}
        self.health = HealthBook(clock, config.health, limits, max_cooldown_s=config.retry.max_cooldown_s)
        self.sinks: tuple[EventSink, ...] = ((structlog_sink(),) if log else ()) + tuple(sinks or ())
        self._sinks_lock = new_lock()
        self._failed_sinks: set[int] = set()
        self._call_ids = itertools.count(1)
        self._next_call: list[Callable[[], None]] | None = None  # see on_next_call
        self.routes = compile_routes(config)
        self._preload_catalogue()
        #: Exact token counts for fit, rules and ceilings (``context.estimate: tiktoken``), when available offline.
        self.token_encoder: TokenEncoder | None = self._token_encoder()
        #: The caller's headers never forwarded: holyroute's own, the caller's credentials, and those rules read.
        self.dropped_headers = DROPPED_HEADERS.union(
            *(plan.rules.header_names for plan in self.routes.values() if plan.rules is not None)
        )
        retry = config.retry
        self.retry = retry
        #: The attempts a call makes on transient errors whatever health and the retry budget say (shadows: 1).
        self.attempt_floor = min(retry.min_attempts, retry.max_attempts)
        #: One retry budget per route (as Envoy budgets per cluster): one route's outage cannot spend the retries
        #: another route needs to fail over.
        self.budgets = {alias: self._retry_budget() for alias in self.routes}
        self.probing = any(e.health_check is not None for e in config.endpoints.values())
        self.tracks_latency = any(arm.balance == "latency" for plan in self.routes.values() for arm in plan.arms)
        #: What this router shares with other processes (cooldowns, limits, rollouts, spend); default: nothing.
        self.state: StateBackend = (
            state if state is not None else open_state(config.state, emit=self.emit, clock=clock, wall_clock=wall_clock)
        )
        self.rollouts: Rollouts | None = self._open_rollouts()
        self._budget_spent: set[str] = set()  # routes whose budget refused a retry (one event per bad spell)
        #: Spend caps per route, endpoint or tag (``budgets:``), counted through the state backend.
        self.spend = (
            SpendBudgets(config.budgets, self.state, emit=self.emit, wall_clock=wall_clock) if config.budgets else None
        )
        #: Thresholds over rolling windows (``alerts:``); add hooks with ``router.alerts.add_hook(fn)``.
        self.alerts: Alerts | None = None
        if config.alerts:  # imported only when configured: a plain routed call never loads the windows
            from holyroute.core.alerts import Alerts

            self.alerts = Alerts(config.alerts, emit=self.emit, clock=clock)
        self._panicking: set[tuple[str, str]] = set()
        #: The routes that cache answers (``routes.<alias>.cache``); empty: the drivers never look.
        self.caches: dict[str, CachePolicy] = {}
        if any(route.cache is not None for route in config.routes.values()):
            from holyroute.core.cache import compile_caches  # loaded only when a route caches

            self.caches = compile_caches(config)
        self.state.attach(self)
        after_fork_in_child(self, type(self)._in_forked_child)
        import tenacity

        self.backoff: Callable[[Any], float] = tenacity.wait_exponential_jitter(
            multiplier=retry.backoff_initial_s, max=retry.backoff_max_s, jitter=retry.backoff_jitter_s
        )

    def _in_forked_child(self) -> None:
        """This router's copy in a forked child (``holyroute.forking``): the attempts in flight were its parent's."""
        self.health.ejections.forget_attempts()

    def _retry_budget(self) -> RetryBudget:
        retry = self.config.retry
        return RetryBudget(ratio=retry.budget_ratio, min_per_s=retry.budget_min_per_s, window_s=retry.budget_window_s)

    def _open_rollouts(self) -> Rollouts | None:
        """The rollouts' states, kept in the state backend; None when no route has a rollout."""
        if not any(route.rollout is not None for route in self.config.routes.values()):
            return None
        from holyroute.core.rollouts import Rollouts

        return Rollouts(self.config, emit=self.emit, clock=self.wall_clock, store=self.state.rollout_store())

    def _preload_catalogue(self) -> None:
        # The catalogue loads here (once per process, tens of ms), not on the first call's thread or event loop.
        for plan in self.routes.values():
            for arm in (*plan.arms, *((plan.shadow,) if plan.shadow is not None else ())):
                for upstream in arm.upstreams:
                    if upstream.price_source == "catalogue":
                        catalogue_model(upstream.model, provider=upstream.provider, base_url=upstream.base_url)

    def _token_encoder(self) -> TokenEncoder | None:
        """tiktoken's encoder when ``context.estimate: tiktoken`` and it is available offline; else None, said once."""
        context = self.config.context
        if context.estimate != "tiktoken":
            return None
        encoder = tiktoken_encoding(context.encoding)
        if encoder is None:
            self.emit(
                "holyroute.tiktoken_unavailable",
                {
                    "encoding": context.encoding,
                    "reason": "tiktoken is not installed or the encoding is not in its local cache (holyroute "
                    "never downloads it); counting with the heuristic. pip install 'holyroute[tiktoken]' and "
                    f"run tiktoken.get_encoding({context.encoding!r}) once where the internet is reachable",
                },
            )
        return encoder

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        """Hand an event to every sink. A sink that raises never breaks the call that emitted the event: the other
        sinks still get it, and the failure is reported to them once per sink as ``holyroute.sink_failed``."""
        for sink in self.sinks:
            try:
                sink(event, fields)
            except Exception as exc:
                self._sink_failed(sink, event, exc)

    def _sink_failed(self, failed: EventSink, event: str, exc: Exception) -> None:
        with self._sinks_lock:
            if id(failed) in self._failed_sinks:
                return
            self._failed_sinks.add(id(failed))
        report = {
            "sink": getattr(failed, "__qualname__", type(failed).__qualname__),
            "event": event,
            "reason": f"{type(exc).__name__}: {str(exc)[:200]}; later failures of this sink are not reported",
        }
        for sink in self.sinks:
            if sink is not failed:
                with contextlib.suppress(Exception):
                    sink("holyroute.sink_failed", dict(report))

    def add_sink(self, sink: EventSink) -> None:
        """Send every later event to ``sink`` too (metrics, traces, alerts: ``sink(event, fields)``). Sinks get
        the same ``fields`` dict one after another: read it, do not change it."""
        with self._sinks_lock:
            self.sinks = (*self.sinks, sink)

    def transition(self, change: Transition | None) -> None:
        """Emit an endpoint's state change, if there was one, and share it with the other processes."""
        if change is not None:
            fields: dict[str, Any] = {"endpoint": change.endpoint, "reason": change.reason}
            if change.ejection_s is not None:
                fields["ejection_s"] = round(change.ejection_s, 3)
            self.emit(change.event, fields)
            if change.event == "holyroute.endpoint_restored":
                self.state.publish(HealthChange("restored", change.endpoint, reason=change.reason))
            else:
                until = self.wall_clock() + (change.ejection_s or 0.0)
                self.state.publish(
                    HealthChange(
                        "quota" if change.quota else "ejected", change.endpoint, until=until, reason=change.reason
                    )
                )

    def close(self) -> None:
        """Stop the state backend's background work (flushing what it holds)."""
        self.state.close()

    async def aclose(self) -> None:
        """:meth:`close` from an event loop."""
        await self.state.aclose()

    def begin(
        self,
        method: str,
        path: str,
        query: str,
        headers: HeaderLookup,
        body: bytes | None,
        *,
        timeout: float | None = None,
    ) -> Call | None:
        """A :class:`Call` for a request to a routed alias, or ``None``: send the request through untouched."""
        if self._next_call is not None:
            self._run_next_call_work()
        if method != "POST" or not body:
            return None
        api = operation_of(path)
        if api is None:
            return None
        view = read_request(body)  # total: a validated view, why it cannot be read, or None (pass it through)
        if not isinstance(view, RequestView):
            # Unreadable within bounds: passed through only if it names no routed alias (else the SDK's own
            # base_url would get it, with the caller's key); one that does is answered here.
            alias = named_alias(body, self.routes) if view is not None else None
            if alias is None:
                return None
            call = Call(
                self, self.routes[alias], api=api[0], operation=api[1], query=query, headers=headers,
                data={"model": alias}, body=body, timeout=timeout, out=None, stream=False, unreadable=view,
            )  # fmt: skip
            if call._plan.alias not in self.caches:
                self.dispatch(call)
            return call
        plan = self.routes.get(view.model)
        if plan is None:
            return None
        # By position, in the order of Call's parameters (keywords to a class cost a dict): the API, the operation,
        # the query, the headers, the body as read and as sent, the caller's timeout, the output it asks for, and
        # whether it streams.
        call = Call(
            self, plan, api[0], api[1], query, headers, view.data, body, timeout, view.max_output_tokens, view.stream
        )
        if call._plan.alias not in self.caches:  # on a caching route, the response cache dispatches it on a miss
            self.dispatch(call)
        return call

    def on_next_call(self, work: Callable[[], None]) -> None:
        """Run ``work`` at the start of this router's next request, in the thread making it: what a state backend
        learns it must do where it may not do it (a forked child's threads, which must not start inside the fork).
        Two requests starting at once may both run it, so ``work`` must be idempotent. It reports its own failures;
        one that raises is dropped, never the request's failure."""
        self._next_call = [*(self._next_call or ()), work]

    def _run_next_call_work(self) -> None:
        works, self._next_call = self._next_call or [], None
        for work in works:
            with contextlib.suppress(Exception):
                work()

    def dispatch(self, call: Call) -> None:
        """``call`` goes on to be routed: it counts as a call in its route's retry budget, and is mirrored when its
        route has a shadow (``call.shadow``). :meth:`begin` dispatches every call of a route without a cache; on a
        route with one, the response cache does, once it did not answer the call. A hit is never dispatched: it
        sends nothing upstream, so it has no shadow, and it is no call of the retry budget (Finagle's budget allows
        retries in proportion to the calls that load the upstream; counting hits would let a burst of them fund a
        retry storm against an upstream that saw none of them)."""
        self.budgets[call._plan.alias].record_call(call.started)
        if call.done or call.shadow_of is not None:  # answered here already (an unreadable body): nothing to mirror
            return
        plan = self.routes[call._alias]  # the alias's own plan, as the caller named it: its shadow, before any rule
        if plan.shadow is not None and self._shadow_wanted(plan):
            call.shadow = call.mirror(self, plan)

    def _shadow_wanted(self, plan: RoutePlan) -> bool:
        """Sampled, and today's shadow spend for the route is under its cap."""
        if self.rng.random() >= plan.shadow_sample:
            return False
        if plan.shadow_cap_usd is None:
            return True
        return self.state.spent(f"shadow:{plan.alias}", "day") < plan.shadow_cap_usd

    def pick(self, plan: RoutePlan, data: Mapping[str, Any], headers: HeaderLookup) -> Leg:
        """The arm of ``plan`` this request goes to: sticky when the route has a key and the request carries it."""
        picker = plan.picker
        if self.rollouts is not None:
            engine = self.rollouts.get(plan.alias)
            if engine is not None:
                picker = engine.picker()
        key = sticky_key(plan.sticky, data, headers) if plan.sticky else None
        if key is not None:
            return Leg(plan.alias, plan.arms[picker.sticky(key)], None, True)
        return plan.legs[picker.random(self.rng)]

    def spend_retry(self, route: str, now: float, *, floor: bool = False) -> bool:
        """Take one retry from ``route``'s budget; the first refusal after a good spell emits an event.

        A retry within the persistence floor (``retry.min_attempts``) is counted but never refused."""
        budget = self.budgets[route]
        if budget.try_spend(now):
            self._budget_spent.discard(route)
            return True
        if floor:
            return True
        if route not in self._budget_spent:
            self._budget_spent.add(route)
            calls, retries = budget.state(now)
            retry = self.retry
            self.emit(
                "holyroute.retry_budget_exhausted",
                {
                    "route": route,
                    "calls": calls,
                    "retries": retries,
                    "reason": f"retries ({retries}) + 1 > {retry.budget_ratio:g} x calls ({calls}) + "
                    f"{retry.budget_min_per_s:g}/s x {retry.budget_window_s:g}s",
                },
            )
        return False

    def panicking(self, leg: Leg, now: float) -> bool:
        """Panic mode: fewer than half of the arm's endpoints are healthy, so health is ignored for it."""
        health = self.health
        ejections = health.ejections
        upstreams = leg.arm.upstreams
        healthy = 0
        for u in upstreams:  # a loop, not sum() over a generator: this runs at every step of every call
            if ejections.ejected(u.endpoint, now) is None and not (
                self.probing and health.probe_status(u.endpoint) == "unhealthy"
            ):
                healthy += 1
        panic = healthy * 2 < len(upstreams)
        if not panic and not self._panicking:  # no arm in panic, nor this one: nothing changes
            return False
        key = (leg.route, leg.arm.name)
        if panic != (key in self._panicking):
            if panic:
                self._panicking.add(key)
                event, reason = "holyroute.panic", f"{healthy} of {len(upstreams)} endpoints healthy (< half)"
            else:
                self._panicking.discard(key)
                event, reason = "holyroute.panic_over", f"{healthy} of {len(upstreams)} endpoints healthy"
            self.emit(event, {"route": leg.route, "arm": leg.arm.name, "reason": reason})
        return panic

    def order(self, arm: Arm) -> list[Upstream]:
        """The arm's endpoints in the order to try them: by its ``balance``, degraded ones (active checks) last."""
        upstreams = list(arm.upstreams)
        if len(upstreams) > 1:
            health = self.health
            if arm.balance == "round_robin":
                turn = next(arm.turns) % len(upstreams)
                upstreams = upstreams[turn:] + upstreams[:turn]
            elif arm.balance == "least_busy":
                upstreams.sort(key=lambda u: health.in_flight(u.endpoint))
            elif arm.balance == "latency":
                upstreams.sort(key=lambda u: health.latency(u.endpoint) or 0.0)
            if self.probing:
                upstreams.sort(key=lambda u: health.probe_status(u.endpoint) == "degraded")
        return upstreams


class Call(Sending):
    """One logical call: its plan, the attempts made so far, and what comes next."""

    __slots__ = ()
    shadow: Call | None
    shadow_of: Call | None

    def __init__(  # noqa: PLR0917 - positional for Router.begin, whose call is on every request (see below)
        self,
        router: Router,
        plan: RoutePlan,
        api: str,
        operation: str,
        query: str,
        headers: HeaderLookup,
        data: Mapping[str, Any],
        body: bytes,
        timeout: float | None,
        out: int | None,
        stream: bool,
        *,
        shadow_of: Call | None = None,
        unreadable: str | None = None,
    ) -> None:
        # Long on purpose: one line per field (typed in CallState), so every field starts in one place; the
        # decisions start in _begin (_plan_legs and _check_spend, core/planning.py). Router.begin passes the
        # arguments by position: keywords to a class go through a dict (about 5k instructions for ten of them).
        self._router = router
        self.shadow = None  # the background copy of this call, when it is mirrored
        self.shadow_of = shadow_of  # for a shadow copy: the call it mirrors
        self._plan = plan
        self._api = api
        self._operation = operation
        self._query = query
        self._data = data
        self._raw_body = body
        self.started = router.clock()
        #: This call's number in this process: on its ``holyroute.failover`` and ``holyroute.request`` events.
        self.id = next(router._call_ids)
        self._timeout = timeout if timeout else None  # the caller's (the SDK's) timeout, per attempt
        self._deadline = self.started + timeout if timeout else None
        self._rejected = False  # the open attempt's answer was judged a failure (its body is still to be read)
        self._headers = headers
        self.stream = stream  # the body says "stream": true (read at the boundary: RequestView.stream)
        own = data.get("stream_options") if stream else None
        self._wants_usage_injected = (
            self.stream
            and api in _INJECT_USAGE_APIS
            and not (own is not None and isinstance(own, Mapping) and own.get("include_usage") is True)
        )
        self._out = out  # the most output it asks for (read at the boundary: requested_output_tokens)
        # A cheap upper-bound guess of its tokens (each bucket takes at most its capacity of it): the body's
        # size / 4 plus the output it asks for at most, within [0, MAX_TOKENS].
        self._tokens = clamp_tokens(len(body) // 4 + (out or 0))
        self._debits = []  # tpm debits (local and shared), settled with the real usage when the call ends
        self._bodies = {}
        self._attempts = 0
        self._passes = 0
        self._cursor = 0
        self._current = None
        self._current_leg = None
        self._legs = []
        self._sequence = []
        self._skipped = {}
        self._excluded = frozenset()  # endpoints out of credit: never again in this call (rare: built when needed)
        self._open = False  # an attempt is begun in the health book and not yet ended (see _end_attempt)
        self._forced = False  # the next walk ignores health: the persistence floor is not reached yet
        # The attempts this call makes on transient errors whatever health and the retry budget say (shadows: 1).
        self._floor = 1 if shadow_of is not None else router.attempt_floor
        self._limited = False
        self._limit_wait = None  # set when the walk ends waiting for an rpm/tpm/headroom reset
        self._limit_waited = 0.0  # seconds this call has waited for limits (bounded by retry.max_wait_s)
        self._last_response = None
        self._last_error = None
        self._failure = None
        self._final = None
        self._first_byte = None
        self._hide_usage = False
        self._fallbacks_added = False
        self._last_leg = None
        self._status = 0
        self._request_id = None
        self._sent_at = 0.0
        self._trial = False
        self._stop_reason = None
        self._quality = None
        self._finish = None
        self._asking = None  # waiting for the state backend's grant
        self._granted = None  # granted: send it next
        self._paid = False  # the retry budget already paid for the attempt being lined up
        self._budget = None  # a spent route/tag budget: the route's own arms are skipped
        self._cache = None
        self._fallback_budgets = {}
        self._tags = ()
        self._alias = plan.alias  # the alias the caller sent (a rule may hand the call to another route)
        self._alias_token = plan.token  # ... as it is in the body, for swapping the model in without re-encoding
        self._rule = None  # the rule that decided, DEFAULT_RULE when none did; None: no rules
        self._input = None  # estimated input tokens, counted when first needed
        self._ceiling = None
        self._check_size = False
        self._size_cost_seen = {}
        self._observe = True  # measured by the route's rollout (not when a rule, a budget or a size moved it)
        self.done = False
        self._begin(plan, headers, data, body, shadow_of=shadow_of, unreadable=unreadable)

    def _begin(
        self,
        plan: RoutePlan,
        headers: HeaderLookup,
        data: Mapping[str, Any],
        body: bytes,
        *,
        shadow_of: Call | None,
        unreadable: str | None,
    ) -> None:
        """Line up the legs: a shadow copy's one leg, a local 400 for an unreadable body, or the planned route."""
        if shadow_of is not None:
            assert plan.shadow is not None
            self._legs = [Leg(plan.alias, plan.shadow, None, False)]
            self._extend_sequence(self._legs[0])
            return
        if unreadable is not None:  # names this alias, cannot be read within bounds: answered here, never sent
            self._legs = [Leg(plan.alias, plan.arms[0], None, False)]
            reason = f"the request body names '{plan.alias}' but {unreadable}"
            self._final = self._local_answer(
                400,
                f"holyroute: {reason}, so it cannot be routed; it was not sent. Send a flatter body, or numbers "
                "with fewer digits",
                "invalid_request_error",
                "holyroute_unroutable_body",
            )
            self._emit_request(400, "error", None, reason, None)
            return
        chosen = self._plan_legs(plan, headers, data, body)
        spend = self._router.spend
        if chosen is not None and spend is not None:  # spend budgets are configured
            self._check_spend(spend, chosen, headers)

    # ---- the step machine ---------------------------------------------------------------------------------------

    def next_step(self) -> Step:
        """What the transport should do next."""
        if self._final is not None:
            if not self.done:  # a local answer decided before any step (a bad pin or ceiling): still one event
                self._emit_request(self._status or None, "error", None, "answered locally", None)
            return self._final
        router = self._router
        now = router.clock()
        failure, self._failure = self._failure, None
        granted, self._granted = self._granted, None
        if granted is not None and not self._past_deadline(now):  # the grant may have taken the time that was left
            if failure is not None:
                self._emit_failover(failure, 0.0, granted.endpoint)
            return self._send(granted, now)
        max_attempts = 1 if self.shadow_of is not None else router.retry.max_attempts
        if self._attempts < max_attempts and not self._past_deadline(now):
            floor = self._attempts < self._floor
            if self._attempts and not self._paid and not router.spend_retry(self.route, now, floor=floor):
                self._stop_reason = "retry budget exhausted"
            else:
                self._paid = False
                upstream = self._next_available(now)
                if upstream is not None:
                    health = router.health
                    if health.rate_limits.shared:
                        rpm, tpm = health.limits(upstream.endpoint)
                        if rpm or tpm:  # the shared store decides; the retry stays paid for
                            self._asking, self._failure, self._paid = upstream, failure, True
                            return Acquire(upstream.endpoint, rpm, tpm, min(self._tokens, tpm) if tpm else self._tokens)
                    if failure is not None:
                        self._emit_failover(failure, 0.0, upstream.endpoint)
                    return self._send(upstream, now)
                limit_wait, self._limit_wait = self._limit_wait, None
                if limit_wait is not None:
                    # Waiting for a limit to reset is not a failed pass: it spends no attempt, pass or retry budget,
                    # only time (retry.max_wait_s in all for such waits, never past the deadline).
                    if failure is not None:
                        self._emit_failover(failure, limit_wait, None)
                    self._limit_waited += limit_wait
                    self._paid = True
                    self._limited = False
                    self._cursor = 0
                    self._skipped.clear()
                    return Wait(limit_wait)
                wait = self._wait_before_next_pass(now)
                if wait is not None:
                    if failure is not None:
                        self._emit_failover(failure, wait, None)
                    self._passes += 1
                    self._cursor = 0
                    self._skipped.clear()
                    return Wait(wait)
        self._final = self._give_up(now)
        return self._final

    # ---- the response cache (the drivers do the reading and writing: drivers/cache.py) ---------------------------

    def open_cache(self) -> CacheTicket | None:
        """This call's cache ticket, on a route that caches; None when it does not (or the call is already answered
        locally, or is a shadow copy). Opened once its route and arm are planned: the key covers the arm's models."""
        policy = self._router.caches.get(self._plan.alias)
        if policy is None or self._final is not None or self.shadow_of is not None or self.done:
            return None
        arm = self._legs[0].arm
        self._cache = policy.ticket(
            self._api, self._data, self._headers, (u.model for u in arm.upstreams), body=self._raw_body
        )
        return self._cache

    @property
    def cache_ticket(self) -> CacheTicket | None:
        """The ticket :meth:`open_cache` opened (settled when the call has ended), or None."""
        return self._cache

    def answer_cached(self, answer: StoredAnswer) -> bytes | None:
        """The body to answer the call with from the cache (the JSON, or its replay as a stream when the caller
        streams), or None when it cannot be given (route it). No attempt is made, so nothing of health, cooldowns,
        limits, spend or rollout measurements is touched. Emits its one ``holyroute.request`` (cost 0, ``saved_usd``).
        """
        ticket = self._cache
        assert ticket is not None, "answer_cached without open_cache"
        options = self._data.get("stream_options")
        include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
        from holyroute.core.cache import replay

        body = replay(self._api, answer.body, stream=self.stream, include_usage=include_usage)
        if body is None:
            return None
        ticket.hit(answer)
        self.done = True
        router = self._router
        leg = self._legs[0]
        latency_ms = round((router.clock() - self.started) * 1e6) / 1000
        # Null-free, as every request event (docs/reference/events.md): no endpoint, no tokens, no request id.
        fields: dict[str, Any] = {
            "call_id": self.id,
            "route": self._plan.alias,
            "arm": leg.arm.name,
            "split_arm": leg.arm.name,
            "model": self._alias,
        }
        if self._rule is not None:
            fields["rule"] = self._rule
        fields.update(
            upstream_model=answer.upstream_model, api=self._api, status=200, outcome="ok", attempts=0,
            sticky=leg.sticky, stream=self.stream, latency_ms=latency_ms,
        )  # fmt: skip
        if self.stream:
            fields["ttft_ms"] = latency_ms
        fields.update(cost_usd=0.0, priced=True, price_source="cache")
        finish = finish_reason(answer.body) if self._api in _INJECT_USAGE_APIS else None
        if finish is not None:
            fields["finish_reason"] = finish
        fields.update(shadow=False, cache="hit")
        if answer.cost_usd is not None:
            fields["saved_usd"] = answer.cost_usd
        router.emit("holyroute.request", fields)
        return body

    @property
    def route(self) -> str:
        """The route this call belongs to (after its rules): the one whose retry budget it spends."""
        return self._plan.alias

    @property
    def alias(self) -> str:
        """The alias the caller sent (its route, before any rule handed the call to another)."""
        return self._alias

    def mirror(self, router: Router, plan: RoutePlan) -> Call:
        """A shadow copy of this call on ``plan``'s shadow arm (see :meth:`Router.dispatch`)."""
        return Call(router, plan, api=self._api, operation=self._operation, query=self._query,
                    headers=_NO_HEADERS, data=self._data, body=self._raw_body, timeout=self._timeout,
                    out=self._out, stream=self.stream, shadow_of=self)  # fmt: skip


class _NoHeaders:
    """An empty header view: shadow copies ignore the caller's pins and header-based stickiness."""

    def get(self, key: str, /) -> str | None:
        return None


_NO_HEADERS: Final = _NoHeaders()
