"""The steps a call asks its driver to take, and what a driver reports back.

A :class:`~holyroute.core.call.Call` answers ``next_step()`` with one :data:`Step`: :class:`Send` an attempt,
:class:`Wait`, :class:`Acquire` room under shared limits, :class:`Respond` with a finished answer, or
:class:`GiveUp`. :class:`Accepted` is the call's word on a response it keeps. Frozen values, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from holyroute.config.schema import _without_userinfo
from holyroute.core.plan import DROPPED_HEADERS

__all__ = ["Accepted", "Acquire", "GiveUp", "Respond", "Send", "ShadowDropped", "Step", "Wait"]


# A named tuple, not a frozen dataclass: one is built on every call, and a frozen dataclass's __init__ costs
# several times as much (a call to object.__setattr__ per field).
class Send(NamedTuple):
    """Send one attempt: ``url``, replace the headers named in ``drop`` with ``headers``, send ``body``.

    ``timeout`` caps every phase of the attempt (the endpoint's timeout and the caller's remaining deadline);
    ``headers_timeout`` caps the wait for the response headers only.
    """

    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    timeout: float | None
    endpoint: str
    headers_timeout: float | None = None
    drop: frozenset[str] = DROPPED_HEADERS  # the caller's headers not to forward (also those rules read)

    def __repr__(self) -> str:
        # The URL may carry user:password@ and configured query values (secrets): shown without either.
        return f"Send(url={_without_userinfo(self.url.partition('?')[0])!r}, endpoint={self.endpoint!r})"


@dataclass(frozen=True, slots=True)
class Wait:
    """Sleep this long, then ask again."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Respond:
    """Hand this answer to the caller as the final response."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Every attempt failed without an HTTP answer: re-raise ``error`` (a timeout when ``timeout``)."""

    error: BaseException
    timeout: bool
    summary: str


@dataclass(frozen=True, slots=True)
class Acquire:
    """Ask the router's state backend for room under ``endpoint``'s shared rpm/tpm limits (one request and
    ``tokens`` estimated tokens), then report its answer with :meth:`Call.on_acquired`."""

    endpoint: str
    rpm: int | None
    tpm: int | None
    tokens: int


Step = Send | Wait | Respond | GiveUp | Acquire


# A named tuple, not a frozen dataclass: one is built on every call, and a frozen dataclass's __init__ costs
# several times as much (a call to object.__setattr__ per field).
class Accepted(NamedTuple):
    """How the transport should watch the body of an accepted answer."""

    event_stream: bool
    hide_usage_chunk: bool
    content_encoding: str | None
    #: The answer declared a ``content-length`` (a stream whose bytes change must drop it; most streams have none).
    sized: bool = False


class ShadowDropped(BaseException):
    """What a driver ends a shadow copy with when it drops the copy before it ran (too many copies in flight, or the
    client closing): the copy's one ``holyroute.request`` then says ``cancelled: ShadowDropped``. Not an
    ``Exception``: a dropped copy is cancelled, not failed, so it counts against no arm's error rate."""
