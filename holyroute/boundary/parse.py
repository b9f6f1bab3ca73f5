"""The boundary: total parsers for what reaches the router from outside, at request time.

It parses upstream response headers (``retry-after`` in seconds or as an HTTP date, ``retry-after-ms``, OpenAI's
``x-ratelimit-reset-*`` durations such as ``1m30s`` / ``6ms`` / ``0.5s``, RFC 3339 timestamps, and the
``x-ratelimit-remaining-*`` / ``-limit-*`` counts), upstream bodies (content codings, the usage of a JSON answer,
the events of a server-sent-events stream) and the caller's request body (a :class:`RequestView`, or ``None``:
not routable, pass it through untouched). The decision core sees only what these functions hand it.

Every function here is total: for any input it returns, never raises, and clamps what it returns to bounds.
A duration is a float within ``[0, max_s]`` or ``None`` when the text is not a duration at all (garbage, ``nan``):
a finite value above the bound, ``inf`` or a date past year 9999 is clamped to ``max_s``, a negative one or a date
in the past to 0. A count (remaining requests, tokens, usage) is an int within ``[0, MAX_TOKENS]`` or ``None``
(absent, not a number); usage fields that are not numbers count as absent (0). A request body that is not a JSON
object naming a model is not routable (it passes through); one nested deeper than :data:`MAX_DEPTH` or holding a
number too long to read is not either, but it must not pass through when it names a routed alias
(:func:`read_request`, :func:`named_alias`: the core answers it). A body in a content coding that cannot be
decoded (unknown coding, corrupt or truncated data, more than :data:`MAX_DECODED_BYTES`) is ``None``: the core
judges it a malformed answer. This module performs no I/O and reads no clock: time comes in as arguments.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import importlib
import json
import math
import re
import zlib
from collections.abc import Callable, Container, Iterator, Mapping
from typing import Any, Final, NamedTuple, Protocol

__all__ = [
    "CACHE_HEADER",
    "CACHE_TTL_HEADER",
    "MAX_CHOICES",
    "MAX_DECODED_BYTES",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "MAX_TOKENS",
    "HeaderLookup",
    "RequestBody",
    "RequestView",
    "SSEScanner",
    "StreamDecoder",
    "Usage",
    "clamp_tokens",
    "content_codings",
    "decode_content",
    "finish_reason",
    "header_count",
    "header_seconds",
    "header_text",
    "named_alias",
    "parse_request",
    "read_request",
    "requested_choices",
    "requested_output_tokens",
    "token_count",
    "usage_from_body",
    "usage_from_mapping",
]

#: The caller's word on the response cache for one call (``holyroute.boundary.cache`` reads it); never forwarded.
CACHE_HEADER = "x-holyroute-cache"
#: The TTL for this call's cached answer, seconds or a duration; never forwarded.
CACHE_TTL_HEADER = "x-holyroute-cache-ttl"

#: The most tokens any count may say (a trillion): far above any model's window or any rate limit, small enough that
#: every product with a price stays a finite float.
MAX_TOKENS: Final = 10**12
#: The most choices (``n``) a request is costed for: OpenAI's own maximum.
MAX_CHOICES: Final = 128
#: The deepest a routable request body may nest (objects and arrays). Real requests, tool schemas included, stay far
#: below; a deeper one is never routed, so no recursive walk (estimates, rules, re-encoding) can overflow. Above the
#: bound of pydantic-core's JSON reader (about 200), so a body that reader accepts needs no depth check of its own.
MAX_DEPTH: Final = 256
#: The most bytes one content-decoded body may grow to; past it the body is undecodable (a decompression bomb).
MAX_DECODED_BYTES: Final = 256 * 1024 * 1024
#: An SSE event longer than this is passed on but never parsed (a usage or error event is a few hundred bytes; a
#: Responses ``response.completed`` event repeats the whole answer, still far below).
MAX_EVENT_BYTES: Final = 16 * 1024 * 1024
#: No header value that means a duration or a count is longer than this; a longer one is not parsed.
_MAX_HEADER_CHARS: Final = 128
#: Content codings stacked deeper than this are refused, as httpx2 refuses them.
_MAX_CODINGS: Final = 5


class HeaderLookup(Protocol):
    """The part of a header mapping the parsers read (``httpx2.Headers`` and ``dict`` both fit)."""

    def get(self, key: str, /) -> str | None: ...


# ---- upstream response headers --------------------------------------------------------------------------------

_NUMBER: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DURATION_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h|d)")
_UNIT_SECONDS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # micro sign
    "μs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
#: Go-style durations already read (``6ms``, ``1.49s``: each limit's reset header takes a few hundred values), as
#: seconds before clamping: a dict lookup, not a match per part. Bare numbers (scaled) and dates are not kept.
_DURATIONS_SEEN: dict[str, float] = {}
#: Years beyond these are far past any bound: no arithmetic on them is needed to clamp.
_FAR_YEARS: Final = 100_000


def _clamp_seconds(value: float, max_s: float) -> float | None:
    if math.isnan(value):
        return None
    return float(min(max(value, 0.0), max_s))


def header_seconds(
    value: str | None, *, max_s: float, now_wall: float | None = None, scale: float = 1.0
) -> float | None:
    """Seconds a header says to wait, within ``[0, max_s]``; ``None`` when ``value`` is not a duration.

    Reads a bare number (times ``scale``: 0.001 for ``retry-after-ms``), a Go-style duration (``1m30s``, ``6ms``,
    ``0.5s``, ``2h``), and, when ``now_wall`` (Unix time) is given, an HTTP date or an RFC 3339 timestamp, counted
    from ``now_wall``. Never raises.

    >>> header_seconds("1m30s", max_s=600), header_seconds("99999999h", max_s=600), header_seconds("soon", max_s=600)
    (90.0, 600.0, None)
    """
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_HEADER_CHARS:
        return None
    max_s = float(max_s) if max_s >= 0 else 0.0  # nan or negative: a bound that allows nothing
    seen = _DURATIONS_SEEN.get(value)
    if seen is not None:
        return _clamp_seconds(seen, max_s)
    text = value.strip()
    if not text:
        return None
    if _NUMBER.fullmatch(text):
        return _clamp_seconds(float(text) * scale, max_s)
    lowered = text.lower()
    if lowered in ("inf", "+inf", "infinity", "+infinity"):
        return max_s
    if lowered in ("-inf", "-infinity"):
        return 0.0
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    else:
        if position == len(text):
            if len(_DURATIONS_SEEN) >= 1024:
                _DURATIONS_SEEN.clear()
            _DURATIONS_SEEN[value] = total
            return _clamp_seconds(total, max_s)
    if now_wall is None or not math.isfinite(now_wall):
        return None
    at = _http_date(text)
    if at is None:
        at = _rfc3339(text)
    if at is None:
        return None
    return _clamp_seconds(at - now_wall, max_s)


def _http_date(text: str) -> float | None:
    """An HTTP date (or any RFC 5322 date) as Unix time; years past any bound come back as +-inf."""
    try:
        parsed = email.utils.parsedate_tz(text)
    except (ValueError, IndexError, TypeError, OverflowError):
        return None
    if parsed is None:
        return None
    year, month, day, hour, minute, second = parsed[:6]
    if year > _FAR_YEARS:
        return math.inf
    if year < -_FAR_YEARS:
        return -math.inf
    offset = parsed[9] or 0
    days = _days_from_civil(year, month, day)
    return float(days * 86400 + hour * 3600 + minute * 60 + second - offset)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date, for any year (no ``datetime`` range limits)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _rfc3339(text: str) -> float | None:
    if not text[:4].isdigit() or "-" not in text:
        return None
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    try:
        return when.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def header_count(value: str | None, *, upper: int = MAX_TOKENS) -> int | None:
    """A count a header says (``x-ratelimit-remaining-tokens: 1200``), within ``[0, upper]``; ``None`` when it is
    not a number. A fraction is rounded down; ``inf`` is ``upper``.

    >>> header_count("1200"), header_count("-3"), header_count("1e400"), header_count("many")
    (1200, 0, 1000000000000, None)
    """
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_HEADER_CHARS:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit() and len(text) <= 15:
        return min(int(text), upper)
    if _NUMBER.fullmatch(text) or text.lower() in ("inf", "+inf", "infinity", "-inf"):
        number = float(text)
        if math.isnan(number):
            return None
        return int(min(max(number, 0.0), float(upper)))
    return None


def header_text(value: str, limit: int = 40) -> str:
    """A header value as it may appear in a reason or event: printable ASCII, at most ``limit`` characters."""
    shown = "".join(c if " " <= c <= "~" else "?" for c in value[: limit + 1])
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


# ---- caller request bodies -------------------------------------------------------------------------------------

#: A JSON object may open after a UTF-8 byte order mark and whitespace (RFC 8259 lets a parser ignore the mark).
_OBJECT_START: Final = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*\{")
_BYTES: Final = (bytes, bytearray)
_OUTPUT_KEYS: Final = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_BRACE: Final = ord("{")  # the usual first byte of a body (the SDKs write no whitespace or byte order mark first)
_MAX_MODEL_CHARS: Final = 256


class RequestView(NamedTuple):
    """A caller's request body, parsed and checked: everything the core reads from it.

    ``data`` is the body's object (nested at most :data:`MAX_DEPTH` deep; a :class:`RequestBody` that decodes the
    whole of it only when asked for a field beyond those below); the other fields are its validated values:
    the model it names, whether it streams, the output it asks for at most (clamped to :data:`MAX_TOKENS`), the
    choices it asks for (``n``, within ``[1, MAX_CHOICES]``), the end user (``user`` or ``safety_identifier``, when
    a string) and ``metadata`` (when an object). Immutable, and a tuple: built on every call, it must be cheap.
    """

    data: Mapping[str, Any]
    model: str
    stream: bool
    max_output_tokens: int | None
    choices: int
    user: str | None
    metadata: Mapping[str, Any] | None


#: The top-level fields the core reads on every call (routing, limits, costing, stream usage); picked out of a body
#: by a validating scan that builds nothing for the rest (the messages, the tools).
_READ_KEYS: Final = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "metadata",
        "service_tier",
        "n",
        "temperature",  # whether a call's answer is meant to repeat (the response cache)
        *_OUTPUT_KEYS,
    }
)


class RequestBody(Mapping[str, Any]):
    """A request body's top-level object whose whole was validated but not decoded: the fields in ``_READ_KEYS``
    come from the scan; asking for any other field (a rule's path, a sticky key, a re-encoding, a size estimate)
    decodes the whole body once. Read-only, as the core treats every body."""

    __slots__ = ("_body", "_known", "_whole")

    def __init__(self, body: bytes | bytearray, known: dict[str, Any]) -> None:
        self._body = body
        self._known = known
        self._whole: dict[str, Any] | None = None

    def whole(self) -> dict[str, Any]:
        """The whole object, decoded on first use (the body was validated, so this cannot fail; should it, the
        scanned fields stand for the body)."""
        whole = self._whole
        if whole is None:
            try:
                decoded = json.loads(self._body)
            except _JSON_ERRORS:
                decoded = None
            whole = self._whole = decoded if isinstance(decoded, dict) else dict(self._known)
        return whole

    def __getitem__(self, key: str) -> Any:
        if self._whole is None and key in _READ_KEYS:
            return self._known[key]
        return self.whole()[key]

    def get(self, key: str, default: Any = None) -> Any:
        if self._whole is None and key in _READ_KEYS:
            return self._known.get(key, default)
        return self.whole().get(key, default)

    def __contains__(self, key: object) -> bool:
        if self._whole is None and key in _READ_KEYS:
            return key in self._known
        return key in self.whole()

    def __iter__(self) -> Iterator[str]:
        return iter(self.whole())

    def __len__(self) -> int:
        return len(self.whole())

    def __repr__(self) -> str:  # never the prompt: the body is the caller's
        return f"RequestBody({len(self._body)} bytes, model={self._known.get('model')!r})"


@functools.cache
def _scanner() -> Any:
    """pydantic-core's JSON validator for a top-level object, keeping only ``_READ_KEYS``: it checks the whole body
    at C speed (strict JSON, UTF-8, numbers within 4300 digits, nesting within about 200) and builds Python values
    for those fields only. Built on first use."""
    from pydantic_core import SchemaValidator, core_schema

    fields = {key: core_schema.typed_dict_field(core_schema.any_schema(), required=False) for key in _READ_KEYS}
    return SchemaValidator(core_schema.typed_dict_schema(fields, extra_behavior="ignore"))


@functools.cache
def _scanner_bounds_depth() -> bool:
    """Whether the scanner itself refuses a body nested deeper than :data:`MAX_DEPTH` (pydantic-core's reader stops
    at about 200 levels). Checked once, on the installed pydantic-core: should a release raise its bound past
    ``MAX_DEPTH``, every accepted body is measured again (:func:`_deeper_than`), slower but never wrong."""
    nested = b'{"model":"m","x":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"
    return _scan(nested) is None


def _scan(body: bytes | bytearray) -> dict[str, Any] | None:
    """The ``_READ_KEYS`` of a body that is one valid JSON object (the last of a repeated key, as ``json.loads``
    keeps), or ``None`` when the scanner refuses it; everything it accepts, ``json.loads`` reads the same way, and
    what it refuses (a byte order mark, a lone surrogate, a long number, deep nesting) goes to ``json.loads``."""
    global _validate
    validate = _validate
    if validate is None:
        validate = _validate = _scanner().validate_json
    try:
        found = validate(body)
    except Exception:  # pydantic_core.ValidationError, and nothing a body can do may escape
        return None
    return found if isinstance(found, dict) else None


#: The scanner's ``validate_json`` and whether it bounds the depth itself, looked up once (not per call).
_validate: Callable[[bytes | bytearray], Any] | None = None
_bounds_depth: bool | None = None


#: Deleted before the nesting of a validated body is measured: every byte but quotes and brackets.
_NOT_STRUCTURE: Final = bytes(set(range(256)) - set(b'"[]{}'))
_PARENS: Final = bytes.maketrans(b"[{]}", b"(())")
_STRING_BODY: Final = re.compile(rb'"[^"]*"')


def _more_openings_than(body: bytes | bytearray, limit: int) -> bool:
    """Whether ``body`` holds more than ``limit`` opening brackets, counted with ``find`` (a memchr that skips the
    text between them; ``bytes.count`` walks byte by byte) and given up at ``limit + 1``."""
    total = 0
    for opening in (b"{", b"["):
        at = body.find(opening)
        while at >= 0:
            total += 1
            if total > limit:
                return True
            at = body.find(opening, at + 1)
    return False


def _deeper_than(body: bytes | bytearray, limit: int) -> bool:
    """Whether a body that is valid JSON nests deeper than ``limit``, measured without decoding it: escaped
    backslashes and quotes go, then every byte but quotes and brackets, then the strings' insides; each pass of
    ``replace(b"()", b"")`` then removes one level of nesting. A handful of C-speed passes over the body."""
    if len(body) <= 2 * limit:
        return False
    if not _more_openings_than(body, limit):  # then it cannot nest deeper (brackets in strings count too)
        return False
    text = bytes(body)
    if b"\\" in text:  # (a memchr) escaped backslashes and quotes go first: they must not end or start a string
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    text = text.translate(_PARENS, _NOT_STRUCTURE)
    text = _STRING_BODY.sub(b"", text)
    for _ in range(limit):
        if not text:
            return False
        text = text.replace(b"()", b"")
    return bool(text)


def parse_request(body: bytes | None) -> RequestView | None:
    """The :class:`RequestView` of a caller's body, or ``None`` when it is not a routable request: not JSON, not an
    object, no string ``model``, nested deeper than :data:`MAX_DEPTH` or holding a number too long to read. Never
    raises.

    >>> parse_request(b' {"model": "chat", "max_tokens": 1e400}').max_output_tokens
    1000000000000
    >>> parse_request(b"[" * 100_000) is None
    True
    """
    view = read_request(body)
    return view if isinstance(view, RequestView) else None


def read_request(body: bytes | None) -> RequestView | str | None:
    """As :func:`parse_request`, but a JSON object that cannot be read within holyroute's bounds comes back as why
    (``"is nested deeper than 128 levels"``, ``"holds a number too long to read"``): the upstream might read it, so
    it must not pass through if it names a routed alias. Never raises.

    >>> read_request(b'{"model": "chat", "n": ' + b"9" * 5000 + b"}")
    'holds a number too long to read (more than 4300 digits)'
    >>> read_request(b"not json") is None
    True
    """
    global _bounds_depth
    if not body or not isinstance(body, _BYTES) or (body[0] != _BRACE and _OBJECT_START.match(body) is None):
        return None
    known = _scan(body)
    if known is not None:
        bounded = _bounds_depth
        if bounded is None:
            bounded = _bounds_depth = _scanner_bounds_depth()
        if bounded or not _deeper_than(body, MAX_DEPTH):
            return _view(RequestBody(body, known), known)
    try:
        data = json.loads(body)
    except RecursionError:
        return _TOO_DEEP
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        # Not a JSONDecodeError: an integer past Python's int_max_str_digits (4300), which a JSON parser may read.
        return None if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError) else _TOO_LONG
    except (TypeError, OverflowError):
        return None
    if not isinstance(data, dict):
        return None
    if _too_deep(data, body):
        return _TOO_DEEP
    return _view(data, data)


def _view(data: Mapping[str, Any], fields: Mapping[str, Any]) -> RequestView | None:
    """The view of a readable body: ``fields`` holds (at least) its ``_READ_KEYS``."""
    model = fields.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= _MAX_MODEL_CHARS:
        return None
    if _PLAIN_FIELDS.issuperset(fields):  # none of the fields read below (most calls): their defaults, as below
        return tuple.__new__(RequestView, (data, model, fields.get("stream") is True, None, 1, None, None))
    user = fields.get("user") or fields.get("safety_identifier")
    metadata = fields.get("metadata")
    # Built by tuple.__new__: a named tuple's own __new__ is a Python function (this runs on every call).
    return tuple.__new__(
        RequestView,
        (
            data,
            model,
            fields.get("stream") is True,
            requested_output_tokens(fields),
            requested_choices(fields),
            user if isinstance(user, str) else None,
            metadata if isinstance(metadata, dict) else None,
        ),
    )


#: Fields a view reads nothing from but ``model`` and ``stream``: a body whose read fields are all among these (most
#: calls: the model, perhaps ``stream`` and its options) has the defaults for the others.
_PLAIN_FIELDS: Final = frozenset({"model", "stream", "stream_options", "temperature", "service_tier"})
_TOO_DEEP: Final = f"is nested deeper than {MAX_DEPTH} levels"
_TOO_LONG: Final = "holds a number too long to read (more than 4300 digits)"
#: ``"model": "<a JSON string>"`` anywhere in a body (a string no longer than any model name can be, escaped).
_MODEL_VALUE: Final = re.compile(rb'"model"[ \t\r\n]*:[ \t\r\n]*("(?:[^"\\]|\\.){1,%d}")' % (6 * _MAX_MODEL_CHARS))


def named_alias(body: bytes | bytearray, aliases: Container[str]) -> str | None:
    r"""The first of ``aliases`` that ``body`` names as a ``"model"`` (escaped or not, at any depth), found by a byte
    search without parsing the body (it is one :func:`read_request` could not read). Never raises.

    >>> named_alias(b'{"x": [[[]]], "model" : "ch\\u0061t"}', {"chat"})
    'chat'
    """
    if b'"model"' not in body:
        return None
    for match in _MODEL_VALUE.finditer(body):
        try:
            name = json.loads(match.group(1))
        except ValueError:
            continue
        if isinstance(name, str) and name in aliases:
            return name
    return None


def _too_deep(data: dict[str, Any], body: bytes | bytearray) -> bool:
    """Whether ``data`` nests deeper than :data:`MAX_DEPTH`, walked without recursion (skipped when the body has too
    few brackets to be that deep)."""
    # Valid JSON that deep opens and closes more than MAX_DEPTH brackets.
    if len(body) <= 2 * MAX_DEPTH or body.count(b"{") + body.count(b"[") <= MAX_DEPTH:
        return False
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        for item in value.values() if isinstance(value, dict) else value:
            if isinstance(item, dict | list):
                if depth >= MAX_DEPTH:
                    return True
                stack.append((item, depth + 1))
    return False


def token_count(value: object) -> int | None:
    """A positive token count a caller or upstream wrote, clamped to :data:`MAX_TOKENS`; ``None`` for anything
    else (absent, 0, negative, ``true``, a string, ``nan``). An integral float (``4096.0``) counts; ``inf`` clamps.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return min(value, MAX_TOKENS) if value > 0 else None
    if isinstance(value, float):
        if not value >= 1:  # nan, negative, zero, fractions of a token
            return None
        return MAX_TOKENS if value >= MAX_TOKENS else int(value)
    return None


def clamp_tokens(value: int) -> int:
    """An estimate within ``[0, MAX_TOKENS]``."""
    return min(max(value, 0), MAX_TOKENS)


def requested_output_tokens(data: Mapping[str, Any]) -> int | None:
    """The most output a request asks for: ``max_completion_tokens`` (chat), ``max_tokens`` (chat, completions,
    compatible providers) or ``max_output_tokens`` (responses), clamped to :data:`MAX_TOKENS`; ``None`` when it
    names none.

    >>> requested_output_tokens({"max_completion_tokens": 4096}), requested_output_tokens({"messages": []})
    (4096, None)
    >>> requested_output_tokens({"max_tokens": 10**400})
    1000000000000
    """
    for key in _OUTPUT_KEYS:
        value = data.get(key)
        if value is not None:
            found = token_count(value)
            if found is not None:
                return found
    return None


def requested_choices(data: Mapping[str, Any]) -> int:
    """The choices a request asks for (``n``), within ``[1, MAX_CHOICES]``; 1 when it names none."""
    value = data.get("n")
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(value, 1), MAX_CHOICES)
    return 1


# ---- content codings ---------------------------------------------------------------------------------------------


def content_codings(header: str | None) -> list[str] | None:
    """The codings a ``content-encoding`` header names, in the order they were applied, lower-cased and without
    ``identity``; ``None`` when there are more than httpx2 would undo."""
    if not header:
        return []
    codings = [coding.strip().lower() for coding in header[:1024].split(",")]
    codings = [coding for coding in codings if coding and coding != "identity"]
    return codings if len(codings) <= _MAX_CODINGS else None


def decode_content(body: bytes, header: str | None, *, max_bytes: int = MAX_DECODED_BYTES) -> bytes | None:
    """``body`` with every content coding of ``header`` undone, or ``None`` when that cannot be done.

    Decodes what httpx2 decodes: ``gzip`` (and ``x-gzip``), ``deflate`` (zlib or raw), ``br`` when ``brotli`` or
    ``brotlicffi`` is importable and ``zstd`` when ``compression.zstd`` or ``backports.zstd`` is, ``identity``, and
    comma-separated stacks of them; coding names are case-insensitive. An unknown coding, corrupt or truncated data,
    or a body that would decode past ``max_bytes`` gives ``None``. Never raises.

    >>> import gzip
    >>> decode_content(gzip.compress(b"{}"), "GZIP"), decode_content(b"junk", "gzip")
    (b'{}', None)
    """
    codings = content_codings(header)
    if codings is None:
        return None
    decoded: bytes | None = body
    for coding in reversed(codings):
        decoder = _decoder(coding)
        if decoder is None or decoded is None:
            return None
        try:
            decoded = decoder(decoded, max_bytes)
        except Exception:  # a third-party decoder's own error type (brotli.error, ZstdError, ...)
            return None
    return decoded


def _decoder(coding: str) -> Callable[[bytes, int], bytes | None] | None:
    if coding in ("gzip", "x-gzip"):
        return _gunzip
    if coding == "deflate":
        return _inflate
    if coding == "br":
        return _brotli()
    if coding == "zstd":
        return _zstd()
    return None


def _zlib_stream(data: bytes, wbits: int, max_bytes: int) -> tuple[bytes, bytes] | None:
    """One complete zlib/gzip stream of ``data``: (its output, the bytes after it); ``None`` when corrupt,
    truncated or too large."""
    try:
        decompressor = zlib.decompressobj(wbits)
        out = decompressor.decompress(data, max_bytes + 1)
    except zlib.error:
        return None
    if len(out) > max_bytes or decompressor.unconsumed_tail or not decompressor.eof:
        return None
    return out, decompressor.unused_data


def _gunzip(data: bytes, max_bytes: int) -> bytes | None:
    """gzip, members concatenated as ``gzip.decompress`` reads them."""
    parts: list[bytes] = []
    size = 0
    rest = data
    while True:
        found = _zlib_stream(rest, 16 + zlib.MAX_WBITS, max_bytes - size)
        if found is None:
            return None
        out, rest = found
        parts.append(out)
        size += len(out)
        if not rest.strip(b"\x00"):  # trailing padding, as gzip.decompress allows
            return b"".join(parts)


class StreamDecoder:
    """The incremental twin of :func:`decode_content` for event streams, which are never buffered whole.

    holyroute asks for streams uncompressed (``accept-encoding: identity``); an upstream that compresses one anyway is
    decoded chunk by chunk, so the usage scanner reads events and the caller gets them decoded. gzip (``x-gzip``) and
    deflate (zlib-wrapped or raw), stacked in any order and any letter case. :meth:`build` gives ``None`` for a coding
    that cannot be undone incrementally; :meth:`decode` raises ``ValueError`` on corrupt data (a broken stream).

    >>> import gzip
    >>> data = gzip.compress(b"data: [DONE]\\n\\n")
    >>> decoder = StreamDecoder.build("GZIP")
    >>> decoder.decode(data[:5]) + decoder.decode(data[5:]) + decoder.flush()
    b'data: [DONE]\\n\\n'
    """

    __slots__ = ("_layers",)

    def __init__(self, codings: list[str]) -> None:
        # Undo the last-applied coding first.
        self._layers: list[_Layer] = [_Layer(coding) for coding in reversed(codings)]

    @classmethod
    def build(cls, header: str | None) -> StreamDecoder | None:
        codings = content_codings(header)
        if not codings or any(coding not in ("gzip", "x-gzip", "deflate") for coding in codings):
            return None
        return cls(codings)

    def decode(self, chunk: bytes) -> bytes:
        for layer in self._layers:
            chunk = layer.decode(chunk)
        return chunk

    def flush(self) -> bytes:
        out = b""
        for layer in self._layers:
            out = layer.decode(out) + layer.flush()
        return out


class _Layer:
    """One coding of a stream, undone incrementally; deflate decides between zlib and raw on its first bytes."""

    __slots__ = ("_coding", "_decompressor", "_head")

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._head = b""
        self._decompressor: Any = zlib.decompressobj(zlib.MAX_WBITS | 16) if coding != "deflate" else None

    def decode(self, chunk: bytes) -> bytes:
        if self._decompressor is None:
            self._head += chunk
            if len(self._head) < 2:
                return b""
            chunk, self._head = self._head, b""
            first, second = chunk[0], chunk[1]
            wrapped = first & 0x0F == 8 and ((first << 8) | second) % 31 == 0
            self._decompressor = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        try:
            return bytes(self._decompressor.decompress(chunk))
        except zlib.error as error:
            raise ValueError(f"{self._coding} stream cannot be decoded: {error}") from None

    def flush(self) -> bytes:
        if self._decompressor is None:
            return b""
        try:
            return bytes(self._decompressor.flush())
        except zlib.error as error:
            raise ValueError(f"{self._coding} stream cannot be decoded: {error}") from None


def _inflate(data: bytes, max_bytes: int) -> bytes | None:
    """deflate: zlib-wrapped as the RFC says, or raw as some servers send it (httpx2 tries both too)."""
    found = _zlib_stream(data, zlib.MAX_WBITS, max_bytes) or _zlib_stream(data, -zlib.MAX_WBITS, max_bytes)
    return found[0] if found is not None else None


def _first_module(*names: str) -> Any:
    """The first of ``names`` that imports, or ``None`` (optional decoders, as httpx2 finds them)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


@functools.cache
def _brotli() -> Callable[[bytes, int], bytes | None] | None:
    module = _first_module("brotli", "brotlicffi")
    if module is None:
        return None
    decompress: Callable[[bytes], bytes] = module.decompress

    def unbrotli(data: bytes, max_bytes: int) -> bytes | None:
        out = decompress(data)
        return out if len(out) <= max_bytes else None

    return unbrotli


@functools.cache
def _zstd() -> Callable[[bytes, int], bytes | None] | None:
    module = _first_module("compression.zstd", "backports.zstd")
    if module is None:
        return None
    new_decompressor: Callable[[], Any] = module.ZstdDecompressor

    def unzstd(data: bytes, max_bytes: int) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        while data:  # frames one after another, as httpx2 reads them
            decompressor = new_decompressor()
            out = decompressor.decompress(data, max_bytes - size + 1)
            size += len(out)
            if size > max_bytes or not decompressor.eof:
                return None
            parts.append(out)
            data = decompressor.unused_data
        return b"".join(parts) if parts else None

    return unzstd


# ---- usage in upstream bodies ----------------------------------------------------------------------------------

_DECODER: Final = json.JSONDecoder()
_USAGE_KEY: Final = re.compile(rb'"usage"\s*:\s*\{')
_FINISH: Final = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z_]{1,64})"')
_TERMINAL_TYPE: Final = re.compile(rb'"type"\s*:\s*"(response\.completed|response\.incomplete|response\.failed|error)"')
_INTERESTING: Final = re.compile(
    rb'"finish_reason"\s*:\s*"|"usage"\s*:\s*\{|"error"|"type"\s*:\s*"(?:response\.(?:completed|incomplete|failed)|error)"'
)
_BOUNDARY: Final = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_JSON_ERRORS: Final = (ValueError, RecursionError, TypeError, OverflowError)


class Usage(NamedTuple):
    """Token counts of one call, in the Chat Completions vocabulary; each within ``[0, MAX_TOKENS]``.

    ``cached_tokens`` (cache reads), ``cache_write_tokens`` and the input audio and image tokens are parts of
    ``prompt_tokens``; reasoning and the output audio and image tokens are parts of ``completion_tokens``. ``model``
    and ``service_tier`` are what the answer said it was served by and billed at (``None`` when it did not say);
    they are not counts, so two usages with the same counts compare equal.

    Immutable; a named tuple rather than a frozen dataclass because one is built on every call, and a frozen
    dataclass's ``__init__`` costs four times as much.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    model: str | None = None
    service_tier: str | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Usage):
            return NotImplemented
        return self[:_COUNTS] == other[:_COUNTS]

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash(self[:_COUNTS])


#: How many of a :class:`Usage`'s fields are counts (the rest are names).
_COUNTS: Final = 9


def _tokens(value: object) -> int:
    if value is None:
        return 0
    if type(value) is int:  # what providers write: checked here without a call
        return min(value, MAX_TOKENS) if value > 0 else 0
    return token_count(value) or 0


_NO_DETAILS: Final[Mapping[str, Any]] = {}


def _details(value: object) -> Mapping[str, Any]:
    # A decoded answer's objects are dicts: checked first, without the Mapping ABC's slower check.
    return value if type(value) is dict or isinstance(value, Mapping) else _NO_DETAILS


def _part(value: object, whole: int) -> int:
    """A count that is part of ``whole``: within ``[0, whole]``."""
    if type(value) is int:  # what providers write
        return value if 0 <= value <= whole else 0 if value < 0 else whole
    if value is None:
        return 0
    found = _tokens(value)
    return found if found <= whole else whole


#: What an answer may name as its model or service tier; anything else is not recorded.
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
_MODEL_KEY: Final = re.compile(rb'"model"\s*:\s*"([A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127})"')
_TIER_KEY: Final = re.compile(rb'"service_tier"\s*:\s*"([A-Za-z0-9_-]{1,32})"')
#: Names already judged by :data:`_NAME` (an answer names one of a handful of models): a dict lookup, not a match.
_NAMES_SEEN: dict[str, str | None] = {}


def _name(value: object) -> str | None:
    if type(value) is not str:
        return None
    seen = _NAMES_SEEN.get(value, _NOT_SEEN)
    if seen is not _NOT_SEEN:
        return seen  # type: ignore[return-value]
    found = value if _NAME.fullmatch(value) is not None else None
    if len(_NAMES_SEEN) >= 1024:
        _NAMES_SEEN.clear()
    _NAMES_SEEN[value] = found
    return found


_NOT_SEEN: Final = object()


def usage_from_mapping(usage: Mapping[str, Any], *, model: object = None, service_tier: object = None) -> Usage:
    """Normalise a provider's ``usage`` object (chat, responses, embeddings, completions; DeepSeek's and
    Anthropic's cache fields). Counts that are not numbers, or not positive, are 0; absurd ones are clamped to
    :data:`MAX_TOKENS`; every part is clamped to its whole. ``model`` and ``service_tier`` are the answer's own
    fields, kept when they look like names."""
    # This runs on every call: a count that is already a plain int within bounds (what providers write) is taken
    # as it is, inline; anything else goes through _tokens / _part.
    get = usage.get
    responses = "input_tokens" in usage or "output_tokens" in usage
    if responses:
        p, c = get("input_tokens"), get("output_tokens")
        in_details, out_details = get("input_tokens_details"), get("output_tokens_details")
    else:
        p, c = get("prompt_tokens"), get("completion_tokens")
        in_details, out_details = get("prompt_tokens_details"), get("completion_tokens_details")
    prompt = p if type(p) is int and 0 <= p <= MAX_TOKENS else _tokens(p)
    completion = c if type(c) is int and 0 <= c <= MAX_TOKENS else _tokens(c)
    ins = in_details if type(in_details) is dict else _NO_DETAILS if in_details is None else _details(in_details)
    outs = out_details if type(out_details) is dict else _NO_DETAILS if out_details is None else _details(out_details)
    v = ins.get("cached_tokens")
    cached = 0 if v is None else v if type(v) is int and 0 <= v <= MAX_TOKENS else _tokens(v)
    if not cached:
        v = get("prompt_cache_hit_tokens")  # DeepSeek
        if v is not None:
            cached = _tokens(v)
    v = ins.get("cache_write_tokens")
    written = 0 if v is None else v if type(v) is int and 0 <= v <= MAX_TOKENS else _tokens(v)
    # Anthropic's own names: its input_tokens leave both cache parts out, so they are added to the prompt.
    read_apart, written_apart = get("cache_read_input_tokens"), get("cache_creation_input_tokens")
    if (read_apart is not None or written_apart is not None) and not cached and not written:
        read_apart, written_apart = _tokens(read_apart), _tokens(written_apart)
        if read_apart or written_apart:
            cached, written = read_apart, written_apart
            if "input_tokens" in usage:
                prompt = min(prompt + read_apart + written_apart, MAX_TOKENS)
    # Every part within its whole (written as comparisons: most parts are 0, and this runs on every call).
    cached = cached if cached <= prompt else prompt
    written = written if written <= prompt - cached else prompt - cached
    reasoning, out_audio, out_image = outs.get("reasoning_tokens"), outs.get("audio_tokens"), outs.get("image_tokens")
    in_audio, in_image = ins.get("audio_tokens"), ins.get("image_tokens")
    # Built by tuple.__new__: a named tuple's own __new__ is a Python function (this runs on every call).
    return tuple.__new__(
        Usage,
        (
            prompt,
            completion,
            cached,
            0 if reasoning is None else _part(reasoning, completion),
            written,
            0 if in_audio is None else _part(in_audio, prompt),
            0 if out_audio is None else _part(out_audio, completion),
            0 if in_image is None else _part(in_image, prompt),
            0 if out_image is None else _part(out_image, completion),
            _name(model) if model is not None else None,
            _name(service_tier) if service_tier is not None else None,
        ),
    )


#: Answers up to this size are read whole by :func:`_answer_scan` (at C speed, building three fields).
_SMALL_ANSWER: Final = 8 * 1024


@functools.cache
def _answer_validator() -> Any:
    from pydantic_core import SchemaValidator, core_schema

    fields = {
        key: core_schema.typed_dict_field(core_schema.any_schema(), required=False)
        for key in ("model", "service_tier", "usage")
    }
    return SchemaValidator(core_schema.typed_dict_schema(fields, extra_behavior="ignore"))


def _answer_scan(body: bytes) -> dict[str, Any] | None:
    """The top-level ``model``, ``service_tier`` and ``usage`` of an answer that is one JSON object, else None."""
    try:
        found = _answer_validator().validate_json(body)
    except Exception:  # pydantic_core.ValidationError; nothing an answer holds may escape
        return None
    return found if isinstance(found, dict) else None


def usage_from_body(body: bytes, encoding: str | None = None) -> Usage | None:
    """Usage of a JSON answer, read from its last top-level ``usage`` object; ``None`` when there is none.

    ``encoding`` is the answer's ``content-encoding`` (decoded as :func:`decode_content` does; undecodable: None).
    Never raises.
    """
    if encoding:
        decoded = decode_content(body, encoding)
        if decoded is None:
            return None
        body = decoded
    if len(body) <= _SMALL_ANSWER:
        # A small answer (most chat answers) is read in one pass by pydantic-core, which builds only its top-level
        # model, service tier and usage; this is cheaper than the searches below, which keep a large one flat.
        top = _answer_scan(body)
        if top is not None:
            usage = top.get("usage")
            if type(usage) is dict:
                return usage_from_mapping(usage, model=top.get("model"), service_tier=top.get("service_tier"))
    # Providers put usage at the end; decoding from the last '"usage":{' avoids parsing a large body twice.
    # Inside JSON strings a quote is escaped, so this byte pattern can only be a key.
    position = body.rfind(b'"usage"')
    while position >= 0:
        match = _USAGE_KEY.match(body, position)
        if match is not None:
            try:
                found, _ = _DECODER.raw_decode(body[match.end() - 1 :].decode("utf-8"))
            except _JSON_ERRORS:
                break
            if isinstance(found, dict):
                return usage_from_mapping(found, **_answer_names(body, position))
            break
        position = body.rfind(b'"usage"', 0, position)
    try:
        data = json.loads(body)
    except _JSON_ERRORS:
        return None
    if isinstance(data, Mapping):
        usage = data.get("usage")
        if isinstance(usage, Mapping):
            return usage_from_mapping(usage, model=data.get("model"), service_tier=data.get("service_tier"))
    return None


#: How far from the start (the model of chat and Responses answers) and around the usage (the model of embeddings
#: answers, which follows their data; the service tier) the answer's names are looked for: a large answer is never
#: scanned whole for them.
_NAMES_WINDOW: Final = 64 * 1024


def _answer_names(body: bytes, usage_at: int) -> dict[str, str | None]:
    """The answer's ``model`` (its first in the first 64 KB, which is the top-level one in OpenAI's chat and Responses
    answers, else the last before the usage, as embeddings answers put it) and ``service_tier`` (its last, within
    64 KB before the usage or after it), read without decoding the body or scanning all of a large one."""
    model = _MODEL_KEY.search(body, 0, _NAMES_WINDOW)
    if model is None:
        position = body.rfind(b'"model"', max(0, usage_at - _NAMES_WINDOW), usage_at)
        while position >= 0 and model is None:
            model = _MODEL_KEY.match(body, position)
            position = body.rfind(b'"model"', max(0, usage_at - _NAMES_WINDOW), position)
    tier = None
    position = body.rfind(b'"service_tier"', max(0, usage_at - _NAMES_WINDOW))
    if position >= 0:
        tier = _TIER_KEY.match(body, position)
    return {
        "model": model.group(1).decode("ascii") if model is not None else None,
        "service_tier": tier.group(1).decode("ascii") if tier is not None else None,
    }


def finish_reason(body: bytes) -> str | None:
    """The first ``finish_reason`` of a chat or completions answer (``stop``, ``length``, ``content_filter``...).

    The key is found by ``bytes.find`` (a regular expression's search tries every byte of a large answer, about six
    times slower); the usual shape, ``"finish_reason":"stop"`` with a reason providers send, is read without one.
    """
    if type(body) is not bytes:  # a bytearray or memoryview, as the pattern's search took them
        body = bytes(body)
    at = body.find(_FINISH_KEY)
    if at < 0:
        return None
    if body.startswith(_STOPPED, at):  # most answers: one C comparison, no slice, no lookup
        return "stop"
    value = at + len(_FINISH_KEY)
    begin = value + 2 if body[value : value + 2] == b':"' else value + 3 if body[value : value + 3] == b': "' else 0
    if begin:
        close = body.find(b'"', begin, begin + 65)
        known = _FINISH_REASONS.get(body[begin:close]) if close > begin else None
        if known is not None:
            return known
    found = _FINISH.search(body, at)  # any other spacing or reason; none matches before the first key
    return found.group(1).decode("ascii") if found is not None else None


_FINISH_KEY: Final = b'"finish_reason"'
#: ``"finish_reason":"stop"`` as OpenAI writes it, and with a space after the colon (the closing quote included).
_STOPPED: Final = (b'"finish_reason":"stop"', b'"finish_reason": "stop"')
#: The reasons OpenAI-compatible providers send, as they appear in a body: looked up, not matched and decoded.
_FINISH_REASONS: Final = {
    reason.encode(): reason
    for reason in ("stop", "length", "tool_calls", "content_filter", "function_call", "end_turn", "max_tokens")
}


class SSEScanner:
    """Watches a server-sent-events byte stream for usage, errors and a proper end; optionally drops one event.

    ``feed`` returns the bytes to hand on. Without ``hide_usage_chunk`` that is the input itself, untouched, and
    parsing happens on the side. With it (holyroute asked for ``stream_options.include_usage`` on the caller's
    behalf), complete events are handed on as they complete and the usage-only chunk (``"choices": []``) is left
    out, so the caller sees the stream it asked for.

    Total: any bytes, split anywhere, never raise, and give the same findings whatever the split. It holds back at
    most one incomplete event; an event longer than :data:`MAX_EVENT_BYTES` is handed on unparsed.
    """

    __slots__ = ("_hide", "_oversize", "_pending", "done", "error", "events", "finish_reason", "finished", "usage")

    def __init__(self, hide_usage_chunk: bool = False) -> None:
        self._hide = hide_usage_chunk
        self._pending = bytearray()  # the incomplete event held back
        self._oversize = False  # inside an event past MAX_EVENT_BYTES: hand it on, skip it until its end
        self.usage: Usage | None = None
        self.events = 0
        self.done = False  # a terminal marker: [DONE] or a final Responses event
        self.finished = False  # a choice reported finish_reason (lenient end for providers without [DONE])
        self.finish_reason: str | None = None  # the first one reported
        self.error: str | None = None

    @property
    def complete(self) -> bool:
        """Whether the stream reached an end the protocol defines (not merely a closed connection)."""
        return self.done or self.finished

    def passes(self, data: bytes) -> bool:
        """Whether :meth:`feed` hands ``data`` on unchanged whatever its events say, so its scan may wait: always
        when nothing is hidden; when the usage chunk is, for one whole event that names no ``"usage"``."""
        if not self._hide:
            return True
        return (
            not self._pending
            and not self._oversize
            and data.endswith(b"\n\n")
            and data.find(b"\n\n") == len(data) - 2
            and b"\r" not in data
            and b'"usage"' not in data
        )

    def feed(self, data: bytes) -> bytes:
        pending = self._pending
        if (
            not pending
            and not self._oversize
            and data.endswith(b"\n\n")
            and data.find(b"\n\n") == len(data) - 2
            and b"\r" not in data
        ):
            # The common case: one whole event per chunk, as providers write them.
            keep = self._scan(data[:-2])
            return data if keep or not self._hide else b""
        # A boundary is at most 4 bytes, and the pending bytes hold none: only their last 3 can start one. Searching
        # from there keeps a long event fed in small chunks linear, not quadratic.
        searched = max(0, len(pending) - 3)
        pending += data
        hide = self._hide
        kept: list[bytes] = []
        start = 0
        for boundary in _BOUNDARY.finditer(pending, searched):
            if self._oversize:
                self._oversize = False  # the end of an oversize event: its first bytes were handed on already
                keep = True
            else:
                keep = self._scan(bytes(pending[start : boundary.start()]))
            if hide and keep:
                kept.append(bytes(pending[start : boundary.end()]))
            start = boundary.end()
        if start:
            del pending[:start]
        # (+ 4: the rest may end in the first bytes of its boundary, so an event of exactly the bound is still read)
        if len(pending) > MAX_EVENT_BYTES + 4 or (self._oversize and pending):
            # Past the bound: hand the event's bytes on as they come and skip it to its end. A trailing run of CR and
            # LF stays back (a few bytes, or it would hold a boundary): it may begin the boundary that ends the event.
            cut = len(pending)
            while cut and pending[cut - 1] in b"\r\n":
                cut -= 1
            if hide:
                kept.append(bytes(pending[:cut]))
            del pending[:cut]
            self._oversize = True
        if not hide:
            return data
        return b"".join(kept)

    def end(self) -> bytes:
        """At the end of the stream: scan and return what is left of an unterminated last event."""
        rest = bytes(self._pending)
        self._pending = bytearray()
        # A last event cut off mid-line is discarded (as the SSE spec says); one missing only its blank line
        # (`data: [DONE]\n`) still counts.
        if not self._oversize and rest.strip() and rest.endswith((b"\n", b"\r")):
            self._scan(rest)
        self._oversize = False
        return rest if self._hide else b""

    def _scan(self, event: bytes) -> bool:
        """Record what the event says; return False when it is the hidden usage-only chunk."""
        if len(event) > MAX_EVENT_BYTES:
            return True
        if event.startswith(b"data: ") and b"\n" not in event and b"\r" not in event:
            data = event[6:]
        else:
            lines = [line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")]
            if not lines:
                return True
            data = b"\n".join(lines)
        self.events += 1
        if data == b"[DONE]":
            self.done = True
            return True
        if _INTERESTING.search(data) is None:
            return True  # a content delta: nothing to record
        finish = _FINISH.search(data)
        if finish is not None:
            self.finished = True
            if self.finish_reason is None:
                self.finish_reason = finish.group(1).decode("ascii")
        terminal = _TERMINAL_TYPE.search(data)
        if terminal is None and not _USAGE_KEY.search(data) and b'"error"' not in data:
            return True
        try:
            obj = json.loads(data)
        except _JSON_ERRORS:
            return True
        if not isinstance(obj, dict):
            return True
        if terminal is not None:
            kind = terminal.group(1).decode("ascii")
            if obj.get("type") == kind:
                self.done = True
                if kind in ("response.failed", "error"):
                    self.error = _error_text(obj) or kind
        elif isinstance(obj.get("error"), Mapping):
            self.error = _error_text(obj) or "error event in stream"
        usage = obj.get("usage")
        response = obj.get("response")
        if not isinstance(usage, Mapping) and isinstance(response, Mapping):
            usage = response.get("usage")
        if isinstance(usage, Mapping):
            named = response if isinstance(response, Mapping) and "model" in response else obj
            self.usage = usage_from_mapping(usage, model=named.get("model"), service_tier=named.get("service_tier"))
            if self._hide and obj.get("choices") == []:
                return False
        return True


def _error_text(obj: Mapping[str, Any]) -> str | None:
    error = obj.get("error")
    if not isinstance(error, Mapping):
        response = obj.get("response")
        error = response.get("error") if isinstance(response, Mapping) else None
    if isinstance(error, Mapping):
        code = error.get("code") or error.get("type")
        if isinstance(code, str):
            return header_text(code, 100)
        if isinstance(code, int) and not isinstance(code, bool):
            return str(code) if -(10**18) < code < 10**18 else "error"
        return "error"
    return None
