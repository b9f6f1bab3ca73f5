"""The one place that knows how the HTTP client library is built inside.

Building an ``httpx2.Request`` through its public constructor re-parses the URL and re-normalises every header, which
is most of holyroute's per-call cost. :func:`attempt_request` instead copies the caller's already-normalised header
list, drops the hop and credential headers and those the endpoint sets itself (the endpoint's value replaces the
caller's, never joins it), appends the endpoint's, and hands the body over as a ready stream. It uses
``Headers._list`` (stable across httpx and httpx2 for years) only when that attribute has the expected shape, and
falls back to the public API otherwise, so a change inside httpx2 costs speed, never correctness. The same holds
for the request itself: it is assembled from the attributes httpx2's constructor would set (the parsed URL, cached
per URL with its ``Host`` value and the header names to drop and add, the header list, the body stream) only while
a probe at import shows that constructor sets exactly those.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, NamedTuple

import httpx2

__all__ = [
    "HeaderView",
    "attempt_request",
    "fast_headers_supported",
    "header_view",
    "path_and_query",
    "restore_read_timeout",
]

_CACHE_LIMIT = 512


def fast_headers_supported(headers: httpx2.Headers) -> bool:
    """Whether ``headers`` keeps the ``(raw, lower, value)`` byte triples the fast path relies on."""
    if type(headers) is httpx2.Headers:
        return _FAST_HEADERS
    items = getattr(headers, "_list", None)
    return isinstance(items, list) and all(isinstance(item, tuple) and len(item) == 3 for item in items[:1])


def _probe() -> bool:
    probe = httpx2.Headers({"X-Probe": "1"})
    items = getattr(probe, "_list", None)
    return items == [(b"X-Probe", b"x-probe", b"1")]


_FAST_HEADERS = _probe()


def header_view(headers: httpx2.Headers) -> Mapping[str, str]:
    """Lower-case name -> value (repeated names joined by ", "): what the core looks at.

    The core reads two of the ~17 headers the SDK sends and five or so of an answer's, so the view decodes only the
    names looked up (:class:`HeaderView`); ``httpx2.Headers.get`` would re-derive the encoding and re-normalise the
    key on every call, and decoding every header up front costs more than all the lookups together.
    """
    if _FAST_HEADERS if type(headers) is httpx2.Headers else fast_headers_supported(headers):
        # A copy of the list (a C copy of its pointers): the driver later deletes headers from the answer it hands
        # on (a decoded body's content-encoding), and a caller may change its request's; the view says what came.
        return HeaderView(list(headers._list))
    return {name.lower(): value for name, value in headers.items()}


_LOWER_NAME: Final = operator.itemgetter(1)

#: The names the core looks up (a handful), as bytes: encoded once, their hashes kept.
_ENCODED: dict[str, bytes] = {}


def _encoded(key: str) -> bytes:
    if len(_ENCODED) >= _CACHE_LIMIT:
        _ENCODED.clear()
    name = _ENCODED[key] = key.encode()
    return name


class HeaderView(Mapping[str, str]):
    """A read-only view of httpx2's ``(raw, lower, value)`` header triples: the first lookup lists the lower-case
    names in a tuple by C code; each lookup counts the name there (a C scan comparing lengths first, cheaper for a
    few lookups among a few dozen names than hashing them all into a set), and a name found once is found by index
    and only its value decoded. Only a name that occurs more than once (``set-cookie``, say) is looked for by a
    Python loop, which joins its values. ``items`` must not change while the view is in use (:func:`header_view`
    copies it). The names listed also serve the attempts that copy the same headers (:meth:`names_for`)."""

    __slots__ = ("_items", "_names")

    def __init__(self, items: list[tuple[bytes, bytes, bytes]]) -> None:
        self._items = items
        self._names: tuple[bytes, ...] | None = None

    def names_for(self, items: list[Any]) -> tuple[bytes, ...] | None:
        """The lower-case names of ``items``, as this view listed them, when ``items`` holds what the view was made
        from (the same triples in the same order: a C comparison that finds each identical); ``None`` when it does
        not (changed since, or another list) or the view has listed none."""
        names = self._names
        return names if names is not None and self._items == items else None

    def get(self, key: str, default: Any = None) -> Any:
        name = _ENCODED.get(key)
        if name is None:
            if not key.isascii():
                return self._all().get(key, default)
            name = _encoded(key)
        names = self._names
        if names is None:
            items = self._items
            names = self._names = tuple(map(_LOWER_NAME, items))
        found = names.count(name)
        if not found:
            return default
        if found == 1:
            return self._items[names.index(name)][2].decode("latin-1")
        # Its values joined by ", ", in order, as httpx2 does.
        return ", ".join([value.decode("latin-1") for _, lower, value in self._items if lower == name])

    def _all(self) -> dict[str, str]:
        whole: dict[str, str] = {}
        for _, lower, value in self._items:
            name = lower.decode("latin-1")
            text = value.decode("latin-1")
            whole[name] = f"{whole[name]}, {text}" if name in whole else text
        return whole

    def __getitem__(self, key: str) -> str:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:  # names only: values may be credentials
        return f"HeaderView({sorted(self._all())})"


def _probe_url() -> bool:
    parts = getattr(httpx2.URL("http://probe.invalid/a%20b?q=1"), "_uri_reference", None)
    return getattr(parts, "path", None) == "/a%20b" and getattr(parts, "query", None) == "q=1"


_FAST_URL: Final = _probe_url()


def path_and_query(url: httpx2.URL) -> tuple[str, str]:
    """``url.path`` (percent-decoded) and ``url.query`` (as text), read from the parsed parts httpx2 keeps while a
    probe at import shows they are what those properties decode (each property re-derives its value per call)."""
    if _FAST_URL:
        parts = url._uri_reference
        path = parts.path or "/"
        return (url.path if "%" in path else path), parts.query or ""
    return url.path, url.query.decode("ascii")


def restore_read_timeout(sent: httpx2.Request, read: float | None) -> None:
    """After the headers of ``sent`` arrived, give its body reads ``read`` instead of the time-to-headers limit.

    httpcore reads ``extensions["timeout"]`` when the body starts to be read, not when the request is sent, so
    changing the (per-attempt) dict in place reaches the body reads. Should that ever change, the body would keep
    the shorter limit: a slow stream would time out, loudly, rather than hang.
    """
    timeout = sent.extensions.get("timeout")
    if isinstance(timeout, dict):
        timeout["read"] = read


class _Target(NamedTuple):
    """What an attempt's request takes from its URL, dropped names and added headers, worked out once per
    distinct triple (a client sends to a handful)."""

    url: httpx2.URL
    host: bytes  # the ``Host`` value
    dropped: frozenset[bytes]  # the lower-case names of the caller's headers not to copy
    added: list[tuple[bytes, bytes, bytes]]  # ``add`` as httpx2's (raw, lower, value) triples


_TARGETS: dict[tuple[str, frozenset[str], Sequence[tuple[str, str]]], _Target] = {}


def _target(url: str, drop: frozenset[str], add: Sequence[tuple[str, str]]) -> _Target:
    key = (url, drop, add)
    found = _TARGETS.get(key)
    if found is None:
        if len(_TARGETS) >= _CACHE_LIMIT:
            _TARGETS.clear()
        parsed = httpx2.URL(url)
        names = drop.union(name.lower() for name, _ in add)
        found = _TARGETS[key] = _Target(
            parsed,
            parsed.netloc,
            frozenset(name.encode("ascii") for name in names),
            [(k.encode("ascii"), k.encode("ascii").lower(), v.encode("latin-1")) for k, v in add],
        )
    return found


#: Which of a caller's headers an attempt copies, by the caller's lower-case names and the names dropped: a C
#: getter built once per distinct pair (a client's SDK sends the same names, in the same order, on every call).
_KEPT: dict[tuple[tuple[bytes, ...], frozenset[bytes]], Callable[[list[Any]], Sequence[Any]]] = {}


#: The last getter :func:`_kept` gave, with its names and dropped set: found again by comparing the names (the same
#: SDK sends the same names on every call), which needs none of them hashed, unlike a lookup in :data:`_KEPT`.
_LAST_KEPT: tuple[tuple[bytes, ...], frozenset[bytes], Callable[[list[Any]], Sequence[Any]]] = (
    (),
    frozenset(),
    operator.itemgetter(slice(0, 0)),
)


def _kept(names: tuple[bytes, ...], dropped: frozenset[bytes]) -> Callable[[list[Any]], Sequence[Any]]:
    """A function of the caller's header list giving, in order, the items whose name is not in ``dropped``: an
    ``operator.itemgetter``, which gathers them by C code (a slice when fewer than two are kept)."""
    global _LAST_KEPT
    last = _LAST_KEPT
    if last[1] is dropped and last[0] == names:
        return last[2]
    key = (names, dropped)
    found = _KEPT.get(key)
    if found is None:
        if len(_KEPT) >= _CACHE_LIMIT:
            _KEPT.clear()
        kept = [at for at, name in enumerate(names) if name not in dropped]
        if len(kept) > 1:
            found = operator.itemgetter(*kept)
        elif kept:
            found = operator.itemgetter(slice(kept[0], kept[0] + 1))
        else:
            found = operator.itemgetter(slice(0, 0))
        _KEPT[key] = found
    _LAST_KEPT = (names, dropped, found)
    return found


#: The attributes ``httpx2.Request.__init__`` sets when it is given a ready ``stream``: a request built with exactly
#: these (without re-parsing the URL or copying the headers again) is the same request. The same holds for the
#: attributes an empty ``Headers()`` and a ``ByteStream(body)`` have.
_REQUEST_FIELDS: Final = frozenset({"method", "url", "headers", "extensions", "stream"})


def _probe_request() -> bool:
    built = httpx2.Request("POST", "http://probe.invalid/", headers=[(b"A", b"1")], stream=httpx2.ByteStream(b""))
    return (
        set(vars(built)) == _REQUEST_FIELDS
        and vars(httpx2.Headers()) == {"_list": [], "_encoding": None}
        and vars(httpx2.ByteStream(b"probe")) == {"_stream": b"probe"}
    )


_FAST_REQUEST: Final = _probe_request()


def _new_request(
    method: str, url: httpx2.URL, headers: httpx2.Headers, stream: httpx2.ByteStream, extensions: dict[str, Any]
) -> httpx2.Request:
    if _FAST_REQUEST:
        request = object.__new__(httpx2.Request)
        request.method = method
        request.url = url
        request.headers = headers
        request.extensions = extensions
        request.stream = stream
        return request
    return httpx2.Request(method, url, headers=headers, stream=stream, extensions=extensions)


def attempt_request(
    request: httpx2.Request,
    url: str,
    *,
    drop: frozenset[str],
    add: Sequence[tuple[str, str]],
    body: bytes,
    extensions: dict[str, Any],
    fast: bool = True,
    listed_by: Mapping[str, str] | None = None,
) -> httpx2.Request:
    """A copy of ``request`` sent to ``url`` with ``body``: headers named in ``drop`` or in ``add`` removed, ``add``
    appended, ``Host`` and ``Content-Length`` set for the new target. The caller's request is not modified.
    ``extensions`` becomes the new request's own (not copied): give a dict no other request holds. ``listed_by``, the
    view of the request's headers (:func:`header_view`), lends the names it listed while the headers are still what it
    saw."""
    target = _target(url, drop, add)
    framing = ((b"Host", target.host), (b"Content-Length", str(len(body)).encode("ascii")))
    caller = request.headers
    if fast and (_FAST_HEADERS if type(caller) is httpx2.Headers else fast_headers_supported(caller)):
        listed = caller._list
        names = listed_by.names_for(listed) if type(listed_by) is HeaderView else None
        if names is None:
            names = tuple(map(_LOWER_NAME, listed))
        if _FAST_REQUEST:  # what Headers() and ByteStream(body) set, without their __init__ (probed at import)
            headers = object.__new__(httpx2.Headers)
            headers._encoding = None
            stream = object.__new__(httpx2.ByteStream)
            stream._stream = body
        else:
            headers, stream = httpx2.Headers(), httpx2.ByteStream(body)
        headers._list = [
            (b"Host", b"host", framing[0][1]),
            *_kept(names, target.dropped)(listed),
            *target.added,
            (b"Content-Length", b"content-length", framing[1][1]),
        ]
    else:
        pairs: list[tuple[bytes, bytes]] = [framing[0]]
        replaced = drop.union(k.lower() for k, _ in add)
        pairs.extend((k, v) for k, v in caller.raw if k.lower().decode("latin-1") not in replaced)
        pairs.extend((k.encode("ascii"), v.encode("latin-1")) for k, v in add)
        pairs.append(framing[1])
        headers, stream = httpx2.Headers(pairs), httpx2.ByteStream(body)
    return _new_request(request.method, target.url, headers, stream, extensions)
