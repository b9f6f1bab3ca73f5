"""Pass-through body streams that watch what flows to the caller and report the call's end to the core.

:class:`BodyWatch` is the sans-I/O part: fed each chunk of an event stream, it returns what to hand on (the chunk
itself, or, when holyroute injected the usage chunk, the events minus that one), notes the first byte, and at the end
works out usage and whether the stream ended properly. (Non-stream answers are read whole by the transports and
judged by the core before the caller sees them.) :class:`SyncTap` and :class:`AsyncTap` are the two thin
drivers, ``httpx2`` byte streams around the upstream's. Nothing here buffers a stream: a chunk is handed on as soon
as it (or, when one event must be hidden, the event it completes) arrives. A stream that stops without the end its
protocol defines raises in the caller instead of ending quietly.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

import httpx2

from holyroute.boundary.parse import StreamDecoder
from holyroute.core.call import Call
from holyroute.core.steps import Accepted
from holyroute.core.usage import SSEScanner

if TYPE_CHECKING:
    from holyroute.drivers.cache import ResponseCache

__all__ = ["AsyncTap", "BodyWatch", "SyncTap"]

#: The most of a stream's (decoded) events kept to put a cached answer together; beyond, the answer is not stored.
_MAX_COLLECTED = 16 * 1024 * 1024


class BodyWatch:
    """Watches one accepted event stream on behalf of its :class:`Call`."""

    __slots__ = ("_cache", "_call", "_collected", "_decoder", "_ended", "_later", "_scanner", "_seen")

    def __init__(
        self, call: Call, accepted: Accepted, decoder: StreamDecoder | None = None, cache: ResponseCache | None = None
    ) -> None:
        self._call = call
        # The response cache wants the whole answer: the (decoded) events are kept, up to a bound, to be put together.
        ticket = call.cache_ticket if cache is not None else None
        self._cache = cache if ticket is not None and ticket.collecting else None
        self._collected: bytearray | None = bytearray() if self._cache is not None else None
        self._scanner = SSEScanner(accepted.hide_usage_chunk)  # by position: a keyword to a class costs a dict
        self._decoder = decoder  # a compressed stream (sent although holyroute asked for identity) is decoded here
        self._seen = 0
        self._ended = False
        self._later: bytes | None = None  # a chunk handed on before it was scanned (see settle)

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to hand on for ``chunk``. A chunk that goes on unchanged whatever its events say (most of
        them) is scanned only by :meth:`settle`, after the caller has it: a stream's first chunk waits for nothing."""
        if not self._seen:
            self._call.on_first_byte()
        self._seen += len(chunk)
        if self._decoder is not None:
            chunk = self._decode(self._decoder.decode, chunk)
        collected = self._collected
        if collected is not None:
            collected += chunk
            if len(collected) > _MAX_COLLECTED:
                self._collected = None  # too large to keep: the call goes on, its answer is not stored
        if self._later is not None:
            self.settle()
        scanner = self._scanner
        if scanner.passes(chunk):
            self._later = chunk
            return chunk
        return scanner.feed(chunk)

    def settle(self) -> None:
        """Scan the chunk :meth:`feed` handed on unscanned, if any. The taps call it once the caller has that chunk;
        every later report (the next chunk, the end, a failure, a close) settles first, so the findings are the
        same as scanning each chunk before handing it on."""
        later = self._later
        if later is not None:
            self._later = None
            self._scanner.feed(later)

    @staticmethod
    def _decode(step: Callable[[bytes], bytes], chunk: bytes) -> bytes:
        try:
            return step(chunk)
        except ValueError as error:  # corrupt data: a broken stream, raised as httpx2 raises it (fail() ends the call)
            raise httpx2.DecodingError(str(error)) from None

    def end(self) -> tuple[bytes, str | None]:
        """The upstream finished the body. Returns bytes still to hand on and, for a torn stream, why."""
        self.settle()
        scanner = self._scanner
        decoder = self._decoder
        tail = self._decode(lambda _: decoder.flush(), b"") if decoder is not None else b""
        rest = scanner.feed(tail) + scanner.end() if tail else scanner.end()  # if it raises, fail() ends the call
        self._ended = True
        torn = None
        if not scanner.complete:
            torn = (
                f"holyroute: the upstream's event stream ended without its final event after "
                f"{scanner.events} events ({self._seen} bytes): the answer is incomplete"
            )
        if torn is None and scanner.error is None:
            self._put_together(tail)
        self._call.on_complete(scanner.usage, error=torn or scanner.error, finish_reason=scanner.finish_reason)
        return rest, torn

    def fail(self, error: BaseException) -> None:
        """Reading the body stopped with ``error``, whatever it is: the one place a tap's exceptions end the call.

        An ``Exception`` (the upstream broke off, a bug) is a broken stream; anything else (``CancelledError``, trio's
        ``Cancelled``, ``KeyboardInterrupt``, ``GeneratorExit`` when the caller stops iterating) is the caller
        closing early, judged as :meth:`close` judges it."""
        if self._ended:
            self._call.cache_written(False)  # stopped while its answer was written: its held event says miss
            return
        if not isinstance(error, Exception):
            self.close()
            return
        self.settle()
        self._ended = True
        self._call.on_complete(self._scanner.usage, error=f"stream broken: {type(error).__name__}")

    def close(self) -> None:
        """The caller closed the body. After the stream's final event that is a normal end (the SDK closes right
        after ``[DONE]``); before it, the call was cancelled."""
        if self._ended:
            return
        self.settle()
        self._ended = True
        scanner = self._scanner
        if scanner.done:
            try:
                scanner.end()
                if scanner.error is None:
                    self._put_together(b"")
            finally:
                self._call.on_complete(scanner.usage, error=scanner.error, finish_reason=scanner.finish_reason)
            return
        self._call.on_complete(scanner.usage, cancelled=True)

    def _put_together(self, tail: bytes) -> None:
        """Hand the call's cache ticket the whole answer this complete stream carried (before the call ends)."""
        ticket = self._call.cache_ticket
        if self._collected is not None and ticket is not None:
            from holyroute.boundary.cache import reassemble_stream

            ticket.body = reassemble_stream(ticket.api, bytes(self._collected + tail))
        self._collected = None

    def keep(self) -> None:
        """Write the answer the call's cache ticket kept, if any (after the call ended; at most once). The call's
        event waits for it: ``stored`` once the store kept the answer."""
        if self._cache is not None:
            self._cache.keep(self._call)

    async def akeep(self) -> None:
        """:meth:`keep` for the async tap."""
        if self._cache is not None:
            await self._cache.akeep(self._call)

    def let_go(self) -> None:
        """End the call as :meth:`close` does if it has not ended, and leave no event held: an answer not written by
        now (the tap is closing after a failed or cancelled write, or was collected unclosed) is not, and the
        call's event says ``miss``. Idempotent."""
        self.close()
        self._call.cache_written(False)


class SyncTap(httpx2.SyncByteStream):
    """The upstream's byte stream, handed on chunk by chunk through a :class:`BodyWatch`."""

    def __init__(self, stream: httpx2.SyncByteStream, watch: BodyWatch) -> None:
        self._stream = stream
        self._watch = watch

    def __del__(self) -> None:
        _dropped(self._watch)

    def __iter__(self) -> Iterator[bytes]:
        watch = self._watch
        try:  # whatever stops the reading (a broken upstream, a cancel, the caller letting go) ends the call
            for chunk in self._stream:
                out = watch.feed(chunk)
                if out:
                    yield out
                watch.settle()  # the caller has the chunk: scan it while the next one is on its way
            rest, torn = watch.end()
            watch.keep()
            if rest:
                yield rest
        except BaseException as error:
            watch.fail(error)
            raise
        if torn is not None:
            raise httpx2.RemoteProtocolError(torn)

    def close(self) -> None:
        try:
            self._watch.close()
            self._watch.keep()
        finally:
            self._watch.let_go()
            self._stream.close()


class AsyncTap(httpx2.AsyncByteStream):
    """The async twin of :class:`SyncTap`."""

    def __init__(self, stream: httpx2.AsyncByteStream, watch: BodyWatch) -> None:
        self._stream = stream
        self._watch = watch

    def __del__(self) -> None:
        _dropped(self._watch)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        watch = self._watch
        try:  # as in SyncTap: cancellation included
            async for chunk in self._stream:
                out = watch.feed(chunk)
                if out:
                    yield out
                watch.settle()
            rest, torn = watch.end()
            await watch.akeep()
            if rest:
                yield rest
        except BaseException as error:
            watch.fail(error)
            raise
        if torn is not None:
            raise httpx2.RemoteProtocolError(torn)

    async def aclose(self) -> None:
        try:
            self._watch.close()
            await self._watch.akeep()
        finally:
            self._watch.let_go()
            await self._stream.aclose()


def _dropped(watch: BodyWatch) -> None:
    """A tap is collected. A stream the caller dropped without reading or closing it still ends its call
    (cancelled, as an early close is): its attempt is no longer in flight and its one event is emitted. (A tap's
    ``__del__`` costs a stream's start nothing; a ``weakref.finalize`` per tap cost it about 15k instructions.) At
    interpreter exit, sinks may be gone: nothing is emitted then."""
    if not sys.is_finalizing():
        watch.let_go()
