"""What each attempt's outcome does to the call: an answer kept or failed over, an error, a stream that ends.

The drivers report every outcome here (``on_acquired``, ``on_response``, ``on_body``, ``on_rejected_body``,
``on_error``, the stream tap's ``on_first_byte`` / ``on_complete``); each is judged once, counted once in the health
book (success, failure, cooldown, quota) and leaves the call ready for the step machine's next question. An attempt
begun in the health book ends in :meth:`Attempts._end_attempt` whatever reports its end, and :meth:`Attempts.owned`
ends the call on every path a driver's block can leave by.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final, Literal, Self

from holyroute.core.health import Debit, server_delay
from holyroute.core.plan import Leg, Upstream
from holyroute.core.planning import Planning
from holyroute.core.steps import Accepted
from holyroute.core.usage import Usage, finish_reason, usage_from_body

__all__ = ["RETRYABLE_STATUS", "Attempts"]


_INJECT_USAGE_APIS: Final = frozenset({"chat", "completions"})
RETRYABLE_STATUS: Final = frozenset({408, 409, 429})
_FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection"})
#: The common verdicts, built once (frozen values): a plain answer, a plain stream, one whose usage chunk is hidden.
_BODY: Final = Accepted(False, False, None)
_STREAM: Final = Accepted(True, False, None)
_HIDING_STREAM: Final = Accepted(True, True, None)


class Attempts(Planning):
    __slots__ = ()

    def on_acquired(self, wait: float | None) -> None:
        """The state backend's answer to :class:`Acquire`: 0.0 granted, > 0 no room for that many seconds, None
        no answer (this process's share of the limit decides). Then ask :meth:`next_step` again."""
        upstream, self._asking = self._asking, None
        assert upstream is not None, "on_acquired without an Acquire"
        health = self._router.health
        now = self._router.clock()
        blocked: tuple[str, float] | None = None
        if wait is None:
            blocked = health.local_limit(upstream.endpoint, self._tokens, now, self._debits)
        elif wait > 0:
            rpm, tpm = health.limits(upstream.endpoint)
            limits = " / ".join(f"{n} {v}" for n, v in (("rpm", rpm), ("tpm", tpm)) if v)
            blocked = (f"shared {limits} reached", now + wait)
            health.limited(upstream.endpoint, now + wait, blocked[0])
        if blocked is None:
            self._granted = upstream
            tpm = health.limits(upstream.endpoint)[1]
            if wait is not None and tpm:  # the shared bucket's grant for this attempt: settled when the call ends
                self._debits.append(Debit(upstream.endpoint, None, min(self._tokens, tpm), tpm))
            return
        self._skipped[(upstream.endpoint, upstream.model)] = blocked
        leg = self._current_leg
        if leg is not None and leg.fallback is None:
            self._limited = True

    def on_response(self, status: int, headers: Mapping[str, str]) -> Accepted | None:
        """Judge an answer's status line. An :class:`Accepted` means hand it to the caller, watched as it says;
        ``None`` means it failed over: read its (error) body, pass it to :meth:`on_rejected_body`, ask again."""
        upstream = self._current
        assert upstream is not None, "on_response without a Send"
        router = self._router
        health = router.health
        now = router.clock()
        if health.cooldowns.record_headroom(upstream.endpoint, upstream.model, headers, now):
            change = health.cooldowns.headroom_change(upstream.endpoint, upstream.model, now, router.wall_clock())
            if change is not None:
                router.state.publish(change)
        # A redirect is a failure of this endpoint (routed requests never follow one: the prompt would leave routing).
        if status < 300 or (400 <= status < 500 and status not in RETRYABLE_STATUS):
            self._status = status
            self._request_id = headers.get("x-request-id")
            content_type = headers.get("content-type") or ""
            encoding = headers.get("content-encoding")
            if content_type.startswith("text/event-stream"):
                router.transition(
                    health.ejections.success(upstream.endpoint, now, self._latency(now), trial=self._trial)
                )
                hide = self._hide_usage
                sized = headers.get("content-length") is not None
                if encoding is None and not sized:  # a stream as providers send it
                    return _HIDING_STREAM if hide else _STREAM
                return Accepted(True, hide, encoding, sized)
            # Only copied (lazily, in on_rejected_body) if the body turns out to be no answer.
            self._pending_response = (status, headers, upstream, self._last_leg)
            return _BODY if encoding is None else Accepted(False, False, encoding)
        reason = f"{status} from upstream" if status >= 400 else f"{status} redirect from upstream (not followed)"
        delay = server_delay(headers, router.wall_clock(), router.retry.max_cooldown_s)
        if status == 429 or delay is not None:
            seconds, said = delay if delay is not None else (router.retry.default_cooldown_s, "no retry header")
            seconds = min(seconds, router.retry.max_cooldown_s)
            reason = f"{status} from upstream; cooldown {seconds:.3g}s ({said})"
            self._cool(upstream, seconds, f"{status} {said}", now)
        if status >= 500 or status == 408 or status < 400:
            self._endpoint_failed(upstream, str(status), now)
        self._pending_response = (status, headers, upstream, self._last_leg)
        self._failure = self._failure_fields(status=status, error=None, reason=reason)
        self._rejected = True
        return None

    def on_body(self, body: bytes) -> bool:
        """The whole (decoded) body of an accepted answer that is not an event stream. True: hand it to the caller
        (the call's event is emitted now); False: a 2xx whose body is not JSON failed over, ask again."""
        router = self._router
        upstream = self._current
        assert upstream is not None, "on_body without a Send"
        now = router.clock()
        status = self._status
        if 200 <= status < 300 and not _looks_like_json(body):
            label = "malformed body"
            self._endpoint_failed(upstream, label, now)
            self._failure = self._failure_fields(
                status=status, error=label, reason=f"{status} with a body that is not JSON"
            )
            self.on_rejected_body(body)
            return False
        ejections = router.health.ejections
        router.transition(ejections.success(upstream.endpoint, now, self._latency(now), trial=self._trial))
        if status < 300:
            if self._api in _INJECT_USAGE_APIS:  # chat and completions answers say why they stopped
                self._finish = finish_reason(body)
            judged = self.shadow_of is not None or (router.rollouts is not None and self._plan.alias in router.rollouts)
            if router.quality is not None and judged:
                leg = self._last_leg if self._last_leg is not None else self._legs[0]
                self._quality = self._judge_quality(leg, body)
        if self._cache is not None and self._cache.collecting:
            self._cache.body = body  # judged with the call's end (settle), kept by the driver
        self.on_complete(usage_from_body(body) if status < 300 else None)
        return True

    def _judge_quality(self, leg: Leg, body: bytes) -> bool | None:
        """The application's quality check; one that raises never fails a call the upstream answered (its verdict
        is then unknown, and the failure is reported as ``holyroute.quality_failed``)."""
        router = self._router
        assert router.quality is not None
        try:
            return bool(router.quality(self._plan.alias, leg.arm.name, body))
        except Exception as exc:
            router.emit(
                "holyroute.quality_failed",
                {"call_id": self.id, "route": self._plan.alias, "arm": leg.arm.name, "error": type(exc).__name__},
            )
            return None

    def on_rejected_body(self, body: bytes) -> None:
        """The body of the answer :meth:`on_response` rejected; kept to hand back if nothing better comes."""
        status, headers, upstream, leg = self._pending_response
        if status < 400:
            self._last_response = (*_redirect_answer(status, headers, upstream.endpoint), upstream, leg)
        else:
            self._last_response = (status, _response_headers(headers), body, upstream, leg)
        router = self._router
        if status == 429 and b"insufficient_quota" in body:
            # Out of credit is not a rate limit: no waiting fixes it, so never again in this call, and not for long.
            self._excluded = self._excluded | {upstream.endpoint}
            router.transition(router.health.ejections.quota_exhausted(upstream.endpoint, router.clock()))
            if self._failure is not None:
                self._failure["reason"] = "429 insufficient_quota"
        self._end_attempt()

    def on_error(self, error: BaseException, *, timeout: bool) -> None:
        """The attempt raised a transport error (connection refused or reset, protocol error, timeout)."""
        upstream = self._current
        assert upstream is not None, "on_error without a Send"
        if self._rejected:
            # The body of an answer already judged a failure broke off: the same failure, not a second one (its
            # health was counted once, by on_response); the answer is kept without its body.
            self.on_rejected_body(b"")
            return
        router = self._router
        kind = "timeout" if timeout else "connection error"
        label = type(error).__name__
        self._endpoint_failed(upstream, label, router.clock())
        self._end_attempt()
        self._last_error = (error, timeout)
        self._failure = self._failure_fields(status=None, error=label, reason=f"{kind}: {label}")

    # ---- what the stream tap reports ----------------------------------------------------------------------------

    def on_first_byte(self) -> None:
        if self.stream and self._first_byte is None:
            self._first_byte = self._router.clock()

    def on_complete(
        self,
        usage: Usage | None,
        *,
        error: str | None = None,
        cancelled: bool = False,
        finish_reason: str | None = None,
    ) -> None:
        """The accepted answer's body ended (or broke, or was closed early); emit the call's one request event."""
        if self.done:
            return
        if finish_reason is not None:
            self._finish = finish_reason
        self._end_attempt()
        status = self._status
        if error is not None or status >= 400:
            outcome = "error"
        elif cancelled:
            outcome = "cancelled"
        else:
            outcome = "ok"
        self._emit_request(status, outcome, usage, error, self._request_id)

    # ---- the one owner of the call's end ------------------------------------------------------------------------

    def owned(self) -> Self:
        """``with call.owned():``: whatever the block raises (cancellation, ``KeyboardInterrupt``, a bug in an inner
        transport, a torn stream) ends the call through :meth:`abandon` before it propagates unchanged. Both drivers
        and both stream taps wrap their work in this one block, so no exception type needs to be listed anywhere.
        The call is its own context manager (:meth:`__exit__`): no generator-based manager is built per call."""
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> Literal[False]:
        if error is not None:
            self.abandon(error)
        return False  # the error propagates unchanged

    def abandon(self, error: BaseException) -> None:
        """The call stops with ``error`` that no step handled. Ends the open attempt (in-flight count, half-open
        trial) and emits the call's one ``holyroute.request``: outcome ``cancelled`` for a cancellation (anything
        that is not an ``Exception``: ``CancelledError``, trio's ``Cancelled``, ``KeyboardInterrupt``, a closed
        generator), else ``error``. Only an ``OSError`` during an attempt counts against the endpoint's health: a
        caller's cancel or a bug on this side is not the endpoint's fault. Safe to call more than once."""
        if self.done:
            self.cache_written(False)  # stopped before the store said it kept the answer: the held event says miss
            return
        cancelled = not isinstance(error, Exception)
        upstream = self._current
        if self._open and upstream is not None and isinstance(error, OSError):
            self._endpoint_failed(upstream, type(error).__name__, self._router.clock())
        self._end_attempt()
        outcome = "cancelled" if cancelled else "error"
        self._emit_request(self._status or None, outcome, None, f"{outcome}: {type(error).__name__}", self._request_id)

    def _begin_attempt(self, upstream: Upstream, now: float) -> None:
        """Begin an attempt on ``upstream``: counted in flight and charged to its rpm/tpm in the health book (maybe
        as the half-open trial); :meth:`_end_attempt` ends it."""
        self._attempts += 1
        self._rejected = False
        self._current = upstream
        self._last_leg = self._current_leg
        self._sent_at = now
        self._forced = False
        self._trial = self._router.health.begin_attempt(upstream.endpoint, now, self._tokens, self._debits)
        self._open = True

    def _end_attempt(self) -> None:
        """End the attempt begun by :meth:`_begin_attempt`, exactly once whatever reports its end."""
        if self._open:
            self._open = False
            upstream = self._current
            assert upstream is not None
            self._router.health.ejections.end(upstream.endpoint, trial=self._trial)

    def _endpoint_failed(self, upstream: Upstream, label: str, now: float) -> None:
        """Count a failure of the attempt's endpoint (``label``: a status, an error's name) in the health book, among
        the endpoints of the arm it was sent for (``max_ejected_percent``); an ejection is emitted and shared."""
        peers = self._last_leg.arm.endpoints if self._last_leg is not None else ()
        router = self._router
        router.transition(router.health.ejections.failure(upstream.endpoint, label, now, peers, trial=self._trial))

    def _latency(self, now: float) -> float | None:
        """This attempt's time to headers, for balance: latency (the only reader); None spares the health lock."""
        return now - self._sent_at if self._router.tracks_latency else None


def _looks_like_json(body: bytes) -> bool:
    """A cheap check that catches truncated bodies and HTML error pages without parsing the whole answer."""
    if body and body[0] in b"{[" and body[-1] in b"}]":  # as answers come: no whitespace to strip (and copy)
        return True
    text = body.strip()
    return bool(text) and text[:1] in b"{[" and text[-1:] in b"}]"


def _redirect_answer(
    status: int, headers: Mapping[str, str], endpoint: str
) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
    """What the caller gets for an endpoint's redirect when nothing better came: a 502 without ``Location`` (so a
    client that follows redirects cannot carry the prompt there) whose JSON error names the redirect."""
    message = (
        f"holyroute: endpoint '{endpoint}' answered {status} (a redirect); routed requests never follow redirects. "
        "Fix the endpoint's base_url (scheme, host, path, trailing segments)"
    )
    body = {"error": {"message": message, "type": "upstream_redirect", "param": None, "code": "holyroute_redirect"}}
    kept = [("content-type", "application/json")]
    request_id = headers.get("x-request-id")
    if request_id is not None:
        kept.append(("x-request-id", request_id))
    return 502, tuple(kept), json.dumps(body).encode()


def _response_headers(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    # The body is handed back decoded, so framing and encoding headers would lie about it.
    return tuple((k.lower(), v) for k, v in headers.items() if k.lower() not in _FRAMING_HEADERS)
