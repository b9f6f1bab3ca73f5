"""The configuration schema: endpoints, routes and prices, loaded from YAML, TOML or a dict.

This module decides what a valid configuration is and says precisely why an invalid one is not: every problem is
reported with its key path (``routes.chat-default.targets[1].endpoints[0]``) and the fix. ``${VAR}`` and
``${VAR:-default}`` are read from the environment at load time. It never prints a secret: API keys and configured
header and query values are held as :class:`pydantic.SecretStr` (masked in ``repr``, ``str`` and JSON dumps), and no
error message echoes the value of a key, a header or a query parameter. A value that could not be sent as it is
(outside Latin-1, a control character, a zero-width or other invisible character, as copy and paste leaves behind)
is rejected here, with its key path and the position of the character, rather than failing every call later.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlencode

import httpx2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)

from holyroute.boundary.durations import parse_duration
from holyroute.boundary.redis_url import SCHEMES, parse_redis_url
from holyroute.config.rules import Rule, compile_rules
from holyroute.exceptions import ConfigError

if TYPE_CHECKING:
    from holyroute.config.prices import PriceRow

__all__ = [
    "Analysis",
    "Cache",
    "Config",
    "Endpoint",
    "EndpointRef",
    "Health",
    "HealthCheck",
    "Price",
    "Retry",
    "Rollout",
    "RolloutStep",
    "Route",
    "RouteCache",
    "Shadow",
    "State",
    "Target",
    "default_config_path",
    "json_schema",
    "load_config",
]

_ENV_PATTERN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SHIELD_PATTERN = re.compile(r"__holyroute_ref_\d+__")
_STICKY_PATTERN = re.compile(r"^(user|header:[A-Za-z0-9_-]+|body:[A-Za-z0-9_.-]+)$")
_TENANT_PATTERN = re.compile(r"^(header:[A-Za-z0-9_-]+|body:[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*)$")


class _Model(BaseModel):
    # hide_input_in_errors: a ValidationError raised by building a model directly must not quote a key either.
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True, use_attribute_docstrings=True
    )


#: RFC 9110 ``token``: what a header name may be.
_HEADER_NAME = re.compile(r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$")
#: Header names holyroute sets itself for each attempt (framing and the hop): neither configured nor forwarded.
_PER_ATTEMPT_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "accept-encoding"})
_ZERO_WIDTH = frozenset({"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"})
_CONTROL_NAMES = {0x00: "NUL", 0x09: "a tab", 0x0A: "a line feed", 0x0D: "a carriage return"}


def unsendable(value: str) -> str | None:
    r"""Why ``value`` cannot be sent as an HTTP header value as it is, or ``None`` when it can. The reason names the
    character's code point and position, never the value: it may be a key.

    >>> unsendable("sk-abc\u200bdef")
    'contains a zero-width character (U+200B) at position 6; re-copy the value'
    >>> unsendable("2025-04-01") is None
    True
    """
    for position, char in enumerate(value):
        code = ord(char)
        if 0x20 <= code < 0x7F or (0xA1 <= code <= 0xFF and code != 0xAD):
            continue  # printable ASCII and Latin-1 (obs-text): what h11 sends
        if char in _ZERO_WIDTH:
            kind = "a zero-width character"
        elif code < 0x20 or 0x7F <= code < 0xA0:
            named = _CONTROL_NAMES.get(code)
            if named is not None:
                return f"contains a control character (U+{code:04X}, {named}) at position {position}; re-copy the value"
            kind = "a control character"
        elif code == 0xA0:
            kind = "a non-breaking space"
        elif unicodedata.category(char) == "Cf" or code == 0xAD:
            kind = "an invisible format character"
        else:
            return (
                f"contains a character outside Latin-1 (U+{code:04X}) at position {position}; "
                "HTTP headers carry only Latin-1 text: re-copy the value"
            )
        return f"contains {kind} (U+{code:04X}) at position {position}; re-copy the value"
    if value[:1] == " ":
        return "starts with a space; re-copy the value without it"
    if value[-1:] == " ":
        return "ends with a space; re-copy the value without it"
    return None


def _without_userinfo(url: str) -> str:
    # Up to the last '@': a password may hold '@' or '/' (a loaded base_url has no '@' after its host).
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


def _sendable(value: object) -> object:
    """Before validation: reject a (secret) value that cannot be sent in a header; other types go on to pydantic."""
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(text, str):
        problem = unsendable(text)
        if problem is not None:
            raise ValueError(problem)
    return value


def _key(value: object) -> object:
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if text == "":
        raise ValueError("is empty; set the key, or remove api_key (and use auth: none) for a keyless server")
    return _sendable(value)


def _header_name(name: str) -> str:
    if not _HEADER_NAME.match(name):
        raise ValueError(
            f"{name[:60]!r} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only); fix the name"
        )
    if name.lower() in _PER_ATTEMPT_HEADERS:
        raise ValueError(f"'{name}' is set by holyroute for each attempt; remove it")
    return name


def _forwardable(name: str) -> str:
    name = _header_name(name).lower()
    if name.startswith("x-holyroute-"):
        raise ValueError(f"'{name}' is holyroute's own header: it is read here and never forwarded; remove it")
    return name


def _catalogue_provider(name: str) -> str:
    from holyroute.config.catalogue import catalogue_providers

    known = catalogue_providers()
    if name not in known:
        raise ValueError(f"'{name}' is not a genai-prices provider; use one of: {', '.join(sorted(known))}")
    return name


#: A secret that is sent in a header or a query string: masked when printed, checked at load.
SecretValue = Annotated[SecretStr, BeforeValidator(_sendable)]
HeaderName = Annotated[str, AfterValidator(_header_name)]


class HealthCheck(_Model):
    """Active probing of one endpoint by a background thread (sync client) or task (async client)."""

    interval_s: Annotated[float, Field(gt=0)] = 30.0
    """Seconds between probes of this endpoint."""
    timeout_s: Annotated[float, Field(gt=0)] = 5.0
    """Seconds a probe may take before it counts as failed."""
    probe: Literal["models", "chat"] = "models"
    """`models`: GET /models (cheap, cannot tell whether a model is served); `chat`: a 1-token chat completion."""
    model: str | None = None
    """Chat probes: the model to ask (default: the first model routed to this endpoint)."""
    slow_ms: Annotated[float, Field(gt=0)] = 2000.0
    """A probe slower than this marks the endpoint degraded: tried last."""


class Endpoint(_Model):
    """One OpenAI-compatible HTTP endpoint and the credentials that belong to it alone."""

    base_url: str
    """An OpenAI-compatible base URL. The request's operation (`chat/completions`, `responses`, `embeddings`,
    `completions`) is appended to it and the caller's query string is kept, less its credentials and the parameters
    the endpoint sets itself. Checked at load as each request's URL will be; a `/`, `?`, `#` or `@` in a user name
    or password must be percent-encoded (`%2F`, `%3F`, `%23`, `%40`). Printed and dumped without its
    `user:password@`."""
    api_key: Annotated[SecretStr, BeforeValidator(_key)] | None = None
    """Sent only to this endpoint: `Authorization: Bearer`, or `api-key:` when `auth: api-key` (Azure). Leave it out,
    with `auth: none`, for keyless servers."""
    timeout: Annotated[float, Field(gt=0)] | None = None
    """Seconds per attempt (connect, read, write, pool), capped by the caller's own timeout."""
    auth: Literal["bearer", "api-key", "none"] = "bearer"
    """How `api_key` is sent: `bearer` (Authorization: Bearer), `api-key` (Azure's header) or `none`."""
    headers: dict[HeaderName, SecretValue] = Field(default_factory=dict)
    """Extra headers for this endpoint; they replace the caller's of the same name. Values are secrets (masked when
    printed); a value with a control, zero-width or non-Latin-1 character fails at load."""
    query: dict[str, SecretValue] = Field(default_factory=dict)
    """Extra query parameters for this endpoint, e.g. `{api-version: 2025-04-01-preview}`; they replace the caller's of
    the same name. Values are secrets, checked like `headers`."""
    forward_headers: list[Annotated[str, AfterValidator(_forwardable)]] = Field(default_factory=list)
    """Caller headers sent to this endpoint only, although holyroute drops them, e.g. `[x-api-key]` for a gateway that
    authenticates each user, or a header a rule reads. Never `x-holyroute-*`, `host`, `content-length`, `transfer-
    encoding`, `connection`, `accept-encoding`, nor a header this endpoint sets itself."""
    organization: Annotated[str, AfterValidator(_sendable)] | None = None
    """Sent as `OpenAI-Organization`; the caller's own value is never forwarded to routed endpoints."""
    project: Annotated[str, AfterValidator(_sendable)] | None = None
    """Sent as `OpenAI-Project`; the caller's own value is never forwarded to routed endpoints."""
    stream_usage: bool = True
    """Ask for `stream_options.include_usage` on streams (hidden from a caller who did not), so streams are costed.
    `false` for providers that reject `stream_options`."""
    rpm: Annotated[int, Field(gt=0)] | None = None
    """Client-side requests per minute for this endpoint (per process, or shared with `state: {backend: redis}`)."""
    tpm: Annotated[int, Field(gt=0)] | None = None
    """Client-side tokens per minute (estimated at send: body size / 4 + max_tokens; settled with the real usage)."""
    health_check: HealthCheck | None = None
    """Active probing of this endpoint in the background; without it, health is judged from real calls alone."""
    prices: dict[str, Price] = Field(default_factory=dict)
    """USD per 1M tokens by upstream model on this endpoint (a reseller's, a negotiated rate); wins over `prices` and
    the catalogue."""
    provider: Annotated[str, AfterValidator(_catalogue_provider)] | None = None
    """The genai-prices provider whose catalogue prices apply (`openai`, `anthropic`, `google`, `deepseek`...), for a
    host the catalogue cannot tell from `base_url` (a reseller, a proxy, a local server). Default: inferred. An id
    the catalogue does not know fails at load, listing the known ones."""

    def request_headers(self) -> tuple[tuple[str, str], ...]:
        """The headers every request to this endpoint carries: its key (in the form ``auth`` says), organisation,
        project and configured headers. They hold the secret: never log them."""
        headers: list[tuple[str, str]] = []
        if self.api_key is not None:
            key = self.api_key.get_secret_value()
            if self.auth == "bearer":
                headers.append(("authorization", f"Bearer {key}"))
            elif self.auth == "api-key":
                headers.append(("api-key", key))
        if self.organization:
            headers.append(("openai-organization", self.organization))
        if self.project:
            headers.append(("openai-project", self.project))
        headers.extend((k.lower(), v.get_secret_value()) for k, v in self.headers.items())
        return tuple(headers)

    def query_string(self) -> str:
        """The configured query parameters, URL-encoded (``api-version=2025-04-01``). They may hold a secret."""
        return urlencode({name: value.get_secret_value() for name, value in self.query.items()})

    def __repr_args__(self) -> Any:
        # A base_url may carry user:password@: shown without it (repr and str both come through here).
        for name, value in super().__repr_args__():
            yield name, (_without_userinfo(value) if name == "base_url" and isinstance(value, str) else value)

    @field_serializer("base_url")
    def _dump_base_url(self, value: str) -> str:
        return _without_userinfo(value)  # model_dump() and JSON dumps: as repr shows it

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an absolute http(s) URL such as https://api.openai.com/v1")
        if "?" in value or "#" in value:
            raise ValueError(
                "must not carry a query or fragment; put query parameters under 'query' "
                "(a '?' or '#' in a password is written %3F or %23)"
            )
        value = value.rstrip("/")
        # Parsed here as every attempt's URL will be, so a bad one fails now and not each call (with an error that
        # would quote it: the parser's messages hold parts of the URL, so none is passed on).
        space = next((i for i, char in enumerate(value) if char.isspace() or not char.isprintable()), None)
        if space is not None:
            raise ValueError(f"contains a space or control character at position {space}; re-copy the URL")
        try:
            url = httpx2.URL(f"{value}/chat/completions")
            port = url.port
        except Exception:
            raise ValueError(
                "is not a URL whose host and port can be read; a '/', '?', '#' or '@' in a user name or password "
                "must be percent-encoded (%2F, %3F, %23, %40)"
            ) from None
        if not url.host:
            raise ValueError("names no host; write it as https://host/v1")
        if b"@" in url.raw_path:
            # user:123/pw@host would go to host 'user', port 123, with the rest of the password in the path.
            raise ValueError(
                "has an '@' after its host; a '/' in a password must be percent-encoded (%2F), and an '@' in the "
                "path too (%40)"
            )
        if port is not None and not 0 < port < 65536:
            raise ValueError("has a port outside 1-65535")
        return value


class EndpointRef(_Model):
    """An endpoint of a target, with the name the provider gives the model there (Azure deployments)."""

    endpoint: str
    """The endpoint's name under `endpoints`."""
    model: str | None = None
    """The model's name on this endpoint (an Azure deployment); default: the target's `model`."""


class Target(_Model):
    """One arm of a split: a model served by equivalent endpoints, tried in order."""

    model: str
    """The upstream model."""
    endpoints: Annotated[list[str | EndpointRef], Field(min_length=1)]
    """Equivalent endpoints, tried in order by failover (`balance` may reorder them). An entry can rename the model per
    endpoint: `{endpoint: azure, model: my-deployment}`."""
    weight: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    """Relative share of the route's traffic, any non-negative number; at least one target per route must
    be positive."""
    name: str | None = None
    """The arm's name in events and reports (default: the model). Needed when two arms serve the same model."""
    balance: Literal["ordered", "round_robin", "least_busy", "latency"] = "ordered"
    """The order the endpoints are tried in: `ordered` (as listed), `round_robin`, `least_busy` (fewest in flight) or
    `latency` (fastest recently)."""
    context_window: Annotated[int, Field(gt=0)] | None = None
    """The tokens the model holds, when the built-in table does not know it or is wrong for it."""
    max_output_tokens: Annotated[int, Field(gt=0)] | None = None
    """The most tokens the model may produce, when the built-in table does not know it or is wrong."""

    @property
    def arm(self) -> str:
        """The arm's name: ``name`` when given, else the model."""
        return self.name or self.model


def parse_duration_s(value: object) -> float:
    """A configured duration: seconds (``90``) or a string (``"90s"``, ``"10m"``, ``"1h30m"``, ``"250ms"``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    seconds = parse_duration(value) if isinstance(value, str) else None
    if seconds is None:
        raise ValueError(f"{value!r} is not a duration; write seconds (90) or 90s, 10m, 1h30m")
    return seconds


#: Seconds, or a string such as "90s", "10m", "1h30m", "250ms"; the JSON Schema says both (editors check the file
#: as written, before it is parsed).
Duration = Annotated[
    float,
    BeforeValidator(parse_duration_s),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*([0-9.]+(ns|us|µs|ms|s|m|h)?)+\s*$", "examples": ["90s", "10m"]},
            ],
            "description": "a duration: seconds (90) or 90s, 10m, 1h30m, 250ms",
        }
    ),
]


class Analysis(_Model):
    """How a rollout's candidate is judged against its stable arm, over the same time window."""

    min_calls: Annotated[int, Field(ge=1)] = 100
    """Calls per arm before any promotion (and before latency, time to first token and cost are judged)."""
    min_duration: Duration = 300.0
    """Time before any promotion."""
    max_duration: Duration | None = None
    """Then, without enough data: inconclusive (a pause); with no candidate data at all: failed."""
    interval: Duration = 5.0
    """At most one measurement per interval."""
    max_error_rate_increase: Annotated[float, Field(ge=0, le=1)] = 0.01
    """The non-inferiority margin on the error rate (0.01: one percentage point)."""
    max_quality_failure_increase: Annotated[float, Field(ge=0, le=1)] = 0.01
    """The same margin for answers the quality callback judged poor."""
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """The level of the sequential error-rate test."""
    max_latency_ratio: Annotated[float, Field(gt=0)] | None = 1.5
    """Candidate p95 latency at most this times stable's."""
    max_ttft_ratio: Annotated[float, Field(gt=0)] | None = 1.5
    """The same for time to first token (streams)."""
    max_cost_ratio: Annotated[float, Field(gt=0)] | None = None
    """Candidate cost per call at most this times stable's, when set."""
    failure_limit: Annotated[int, Field(ge=0)] = 0
    """Failed measurements tolerated; one more aborts."""
    inconclusive_limit: Annotated[int, Field(ge=0)] = 0
    """Inconclusive measurements tolerated; one more pauses."""


class Pause(_Model):
    duration: Duration | None = None
    """How long to pause; without one, wait for a person (`holyroute rollout promote`)."""


class RolloutStep(_Model):
    """One step: exactly one of ``set_weight`` (candidate %), ``pause`` or ``analysis``."""

    set_weight: Annotated[float, Field(ge=0, le=100)] | None = None
    """Set the candidate's share, in percent."""
    pause: Pause | None = None
    """Pause for a duration, or until promoted by hand."""
    analysis: dict[str, Any] | None = None
    """Judge the candidate against stable; the keys override the rollout's `analysis` for this step."""

    @model_validator(mode="after")
    def _one_kind(self) -> RolloutStep:
        given = [name for name in ("set_weight", "pause", "analysis") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "a step is exactly one of {set_weight: N}, {pause: {duration: 10m}}, {pause: {}} or {analysis: {...}}"
            )
        return self


class Rollout(_Model):
    """A progressive delivery of ``candidate`` against ``stable`` (each a target).

    ``canary`` walks ``steps``. ``blue_green`` switches 100% at once, after an analysis on ``preview_weight`` % when
    that is set, and rolls back to stable instantly on ``rollback_on_consecutive_errors`` candidate errors in a row.
    """

    strategy: Literal["canary", "blue_green"] = "canary"
    """`canary` walks `steps`; `blue_green` switches to 100% at once (after a preview analysis when `preview_weight` is
    set)."""
    stable: Target
    """The arm in service now."""
    candidate: Target
    """The arm being rolled out."""
    steps: list[RolloutStep] = Field(default_factory=list)
    """Canary: the steps, in order, each one of `set_weight`, `pause` or `analysis`."""
    analysis: Analysis = Field(default_factory=Analysis)
    """Defaults for every analysis step."""
    preview_weight: Annotated[float, Field(ge=0, lt=100)] = 0.0
    """Blue-green: the candidate's share during the analysis before the switch (0: no preview)."""
    rollback_on_consecutive_errors: Annotated[int, Field(ge=1)] | None = None
    """Roll back at once after this many candidate errors in a row (default 5 for blue_green, off for canary)."""

    @model_validator(mode="after")
    def _steps_for_strategy(self) -> Rollout:
        if self.strategy == "canary" and not self.steps:
            raise ValueError("a canary rollout needs steps, e.g. [{set_weight: 5}, {analysis: {}}, {set_weight: 50}]")
        if self.strategy == "blue_green" and self.steps:
            raise ValueError("a blue_green rollout has no steps: use preview_weight (and analysis) instead")
        return self

    def plan(self) -> list[RolloutStep]:
        """The steps to walk: ``steps`` for a canary; preview, analysis and switch for blue-green."""
        if self.strategy == "canary":
            return self.steps
        preview = [RolloutStep(set_weight=self.preview_weight), RolloutStep(analysis={})] if self.preview_weight else []
        return [*preview, RolloutStep(set_weight=100)]

    @property
    def consecutive_error_limit(self) -> int | None:
        if self.rollback_on_consecutive_errors is not None:
            return self.rollback_on_consecutive_errors
        return 5 if self.strategy == "blue_green" else None


class Shadow(Target):
    """A target that receives a sampled copy of the route's calls in the background; callers never wait for it."""

    sample: Annotated[float, Field(ge=0, le=1)] = 0.05
    """The share of the route's calls copied to the shadow target."""
    max_cost_usd_per_day: Annotated[float, Field(ge=0)] | None = None
    """Stop mirroring for the rest of the UTC day once the shadow's spend reaches this."""


class RouteCache(_Model):
    """This route's answers kept and given again to identical requests (``docs/concepts/cache.md`` states the key rule).

    ``when``: ``deterministic`` (the default) caches embeddings, and chat, completions and responses calls asking
    ``temperature: 0`` (with ``n`` absent or 1), plus any call the caller marks with ``x-holyroute-cache: on``;
    ``marked`` only calls so marked; ``always`` every call. ``exclude``: top-level body fields whose presence (not
    null, not empty) keeps a call out of the cache, such as ``tools``. ``ignore_fields``: top-level body fields left
    out of the key besides ``user``, ``metadata``, ``stream`` and ``stream_options``. ``tenant``: a header
    (``header:x-tenant``) or a body path (``body:metadata.tenant``) that scopes the key; a call without it is not
    cached. ``store_truncated``: also keep answers cut off by ``finish_reason: length``.
    """

    ttl: Annotated[Duration, Field(gt=0)] = 3600.0
    """How long an answer is kept (seconds or a duration such as `1h`); a caller's `x-holyroute-cache-ttl` wins."""
    when: Literal["deterministic", "marked", "always"] = "deterministic"
    """Which calls are cached: `deterministic` (embeddings; `temperature: 0` with `n` absent or 1), `marked` (only
    calls sent with `x-holyroute-cache: on`), `always`. A marked call is cached whatever this says."""
    exclude: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    """Top-level body fields whose presence (not null, not empty) keeps a call out of the cache, such as `tools`."""
    ignore_fields: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    """Top-level body fields left out of the key, besides `user`, `metadata`, `stream` and `stream_options`."""
    tenant: str | None = None
    """Scope the key per tenant: `header:<name>` or `body:<field.path>`; a call without it is not cached."""
    store_truncated: bool = False
    """Also keep answers cut off by `finish_reason: length`."""

    @field_validator("tenant")
    @classmethod
    def _check_tenant(cls, value: str | None) -> str | None:
        if value is not None and not _TENANT_PATTERN.match(value):
            raise ValueError(f"tenant must be 'header:<name>' or 'body:<path>', got {value[:60]!r}")
        return value

    @field_validator("ignore_fields")
    @classmethod
    def _check_ignored(cls, value: list[str]) -> list[str]:
        if "model" in value:
            raise ValueError("'model' always belongs to the key (the route and its upstream models do); remove it")
        return value


class Cache(_Model):
    """Where cached answers live (``backend``) and how much of them: off until a route sets ``cache:``.

    ``memory``: this process, a least-recently-used store bounded by ``max_entries`` and ``max_bytes``. ``redis``:
    shared by every process on the ``state:`` Redis (its ``url``, under its ``prefix``), each entry with its TTL; an
    index kept next to the entries bounds them by ``max_entries`` and ``max_bytes`` too (the entries closest to
    expiry go first). An answer larger than ``max_entry_bytes`` is never stored.
    """

    backend: Literal["memory", "redis"] = "memory"
    """`memory`: this process; `redis`: every process on the `state` Redis (its `url`, under its `prefix`)."""
    max_entries: Annotated[int, Field(gt=0)] = 10_000
    """The most answers kept; past it the least recently used (memory) or soonest to expire (Redis) go first."""
    max_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    """The most bytes the kept answers take, keys and bookkeeping included."""
    max_entry_bytes: Annotated[int, Field(gt=0)] = 1024 * 1024
    """An answer larger than this is never kept."""
    timeout_ms: Annotated[float, Field(gt=0, le=10_000)] = 50.0
    """Redis: the most one command may take; slower counts as a miss."""


class Route(_Model):
    """A model alias the application sends, split across targets (or rolled out), with fallback aliases."""

    targets: list[Target] = Field(default_factory=list)
    """The arms the route's traffic is split across, by weight (or give `rollout` instead)."""
    rollout: Rollout | None = None
    """A progressive delivery of a candidate against a stable arm, instead of `targets`."""
    shadow: Shadow | None = None
    """A target that receives a sampled copy of the route's calls in the background; callers never wait for it."""
    sticky: str | None = None
    """Keep each caller on one arm: `user` (the body's `user` or `safety_identifier`), `header:<name>` or
    `body:<field.path>`."""
    fallbacks: list[str] = Field(default_factory=list)
    """Aliases tried in order once every endpoint of the chosen arm has failed (one level deep: their own fallbacks are
    not followed)."""
    rules: list[Rule[Target]] = Field(default_factory=list)
    """Tried in order before the split; the first whose `when` holds sends the request to its `use`."""
    max_cost_usd: Annotated[float, Field(gt=0)] | None = None
    """The most a call may cost at worst (input estimate + requested output, at each candidate's price); candidates
    over it are skipped."""
    cache: RouteCache | None = None
    """Answer identical requests from the response cache (off unless set; the store is the top-level `cache`)."""

    @model_validator(mode="after")
    def _targets_or_rollout(self) -> Route:
        if self.rollout is not None and self.targets:
            raise ValueError("give either 'targets' or 'rollout' (whose stable and candidate are the targets)")
        if self.rollout is None and not self.targets:
            raise ValueError("needs 'targets' (at least one) or a 'rollout'")
        return self

    @property
    def arms(self) -> list[Target]:
        """The targets traffic is split across: the rollout's stable and candidate, or ``targets``."""
        if self.rollout is not None:
            return [self.rollout.stable, self.rollout.candidate]
        return self.targets

    @field_validator("sticky")
    @classmethod
    def _check_sticky(cls, value: str | None) -> str | None:
        if value is not None and not _STICKY_PATTERN.match(value):
            raise ValueError(f"sticky must be 'user', 'header:<name>' or 'body:<field>', got {value!r}")
        return value


class Retry(_Model):
    """How hard one call tries before it hands the last answer back."""

    max_attempts: Annotated[int, Field(ge=1, le=50)] = 3
    """Upstream attempts per call, failovers and fallbacks included."""
    min_attempts: Annotated[int, Field(ge=0, le=50)] = 3
    """Attempts made on transient errors whatever health and the retry budget say (never more than max_attempts). 3 is
    the OpenAI SDK's default max_retries (2) + 1, the persistence holyroute switches off; 0 lets health alone decide
    (a call may then be answered locally, 429, with no attempt at all)."""
    backoff_initial_s: Annotated[float, Field(ge=0)] = 0.5
    """First wait between passes over the endpoints (tenacity's wait_exponential_jitter)."""
    backoff_max_s: Annotated[float, Field(ge=0)] = 8.0
    """Longest wait between passes."""
    backoff_jitter_s: Annotated[float, Field(ge=0)] = 0.25
    """Random jitter added to each wait."""
    max_wait_s: Annotated[float, Field(ge=0)] = 10.0
    """Never wait longer than this for a backoff or a cooldown to end."""
    default_cooldown_s: Annotated[float, Field(ge=0)] = 1.0
    """Cooldown after a 429 that names no duration."""
    max_cooldown_s: Annotated[float, Field(gt=0)] = 600.0
    """The longest cooldown or headroom wait any header can ask for."""
    budget_ratio: Annotated[float, Field(ge=0, le=10)] = 0.2
    """Failovers and retries allowed per call, over the window, beyond min_attempts."""
    budget_min_per_s: Annotated[float, Field(ge=0)] = 1.0
    """Retries always allowed per second (the floor)."""
    budget_window_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    """The retry budget's window."""
    when_limited: Literal["failover", "wait"] = "failover"
    """An arm out of rpm/tpm/headroom: go to the fallbacks (`failover`) or wait for the reset (`wait`)."""
    headers_timeout_s: Annotated[float, Field(gt=0)] | None = None
    """Per attempt, until response headers (non-stream headers come after generation)."""
    stream_headers_timeout_s: Annotated[float, Field(gt=0)] | None = 20.0
    """The same for streams, whose headers come before the first token."""


class Health(_Model):
    """Passive health (outlier ejection) of endpoints, judged from the answers of real calls."""

    consecutive_failures: Annotated[int, Field(ge=1)] = 5
    """Failures in a row (5xx, 408, connection errors, timeouts, 2xx bodies that are not JSON) that eject
    an endpoint."""
    base_ejection_s: Annotated[float, Field(gt=0)] = 30.0
    """Ejected for this times the ejections in a row, capped at max_ejection_s."""
    max_ejection_s: Annotated[float, Field(gt=0)] = 300.0
    """The longest ejection."""
    max_ejected_percent: Annotated[float, Field(ge=0, le=100)] = 50.0
    """Never more than this share of a target's endpoints ejected (at least one)."""
    quota_ejection_s: Annotated[float, Field(gt=0)] = 3600.0
    """Ejection after a 429 whose body says insufficient_quota."""


class Price(_Model):
    """USD per one million tokens."""

    input: Annotated[float, Field(ge=0)]
    """USD per 1M input tokens."""
    output: Annotated[float, Field(ge=0)] = 0.0
    """USD per 1M output tokens."""
    cached_input: Annotated[float, Field(ge=0)] | None = None
    """USD per 1M cached input tokens (default: the input rate)."""
    reasoning: Annotated[float, Field(ge=0)] | None = None
    """USD per 1M reasoning tokens (default: billed as output)."""

    def row(self) -> PriceRow:
        from holyroute.config.prices import PriceRow

        return PriceRow(self.input, self.input if self.cached_input is None else self.cached_input, self.output,
                        self.reasoning)  # fmt: skip


class Budget(_Model):
    """A USD cap on a route, an endpoint or a request tag, per hour, day or month (see ``core/spend.py``)."""

    scope: Literal["route", "endpoint", "tag"]
    """What the cap applies to: a `route`, an `endpoint`, or a request `tag` (the `x-holyroute-tags` header)."""
    name: Annotated[str, Field(min_length=1)]
    """The route, endpoint or tag name."""
    usd: Annotated[float, Field(gt=0)]
    """The cap in USD per period."""
    period: Literal["hour", "day", "month"] = "day"
    """The period spend is counted over (UTC)."""
    action: Literal["block", "fallback"] = "block"
    """Over a route or tag cap: `block` answers 429 at once, `fallback` serves from the route's fallbacks. An endpoint
    over its cap is skipped."""


class ContextFit(_Model):
    """How a request's input tokens are counted for context-window fit, rules and cost ceilings."""

    estimate: Literal["heuristic", "tiktoken"] = "heuristic"
    """`heuristic`: UTF-8 bytes / 4 of the text (about 5 us); `tiktoken`: exact, with holyroute[tiktoken] and the
    encoding in tiktoken's local cache (holyroute never downloads it; without it, the heuristic is used)."""
    encoding: Literal["o200k_base", "cl100k_base"] = "o200k_base"
    """The tiktoken encoding."""


class AlertRule(_Model):
    """A threshold on a route's or an endpoint's calls over a rolling window (see ``core/alerts.py``)."""

    scope: Literal["route", "endpoint"]
    """Watch a `route` or an `endpoint`."""
    name: Annotated[str, Field(min_length=1)] = "*"
    """A route or endpoint name, or `*` for each of them separately."""
    metric: Literal["error_rate", "p95_latency_ms", "cost_per_call_usd", "projected_daily_usd"]
    """What is measured over the window."""
    above: Annotated[float, Field(ge=0)]
    """Fire when the metric is above this."""
    resolve_below: Annotated[float, Field(ge=0)] | None = None
    """Resolve when the metric is back at or under this (default: above)."""
    window: Duration = 300.0
    """The rolling window, kept in ten slices."""
    min_calls: Annotated[int, Field(ge=1)] | None = None
    """Calls needed in the window to fire (default: 20 for rates and p95, 5 for cost per call, 1 for
    projected spend)."""
    alert: str | None = None
    """The name events and hooks carry (default: `<metric> <scope> <name>`)."""

    @property
    def label(self) -> str:
        return self.alert or f"{self.metric} {self.scope} {self.name}"


class State(_Model):
    """Where the state every process must agree on lives.

    ``memory``: this process only. ``file`` (the default): rollout state in a JSON file every process on the host
    reads; health, limits, measurements and spend stay in each process. ``redis``: all of it shared through Redis
    (cooldowns, ejections, headroom, rpm/tpm buckets, rollout state and measurements, spend), so many workers and
    hosts act as one router.
    """

    backend: Literal["file", "memory", "redis"] = "file"
    """`memory`: this process only; `file`: rollout state shared by the processes of a host; `redis`: everything shared
    by every process."""
    path: str = "holyroute-state.json"
    """backend file: the JSON file every process on the host reads."""
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    """backend redis: `redis://`, `rediss://` or `unix://`; may hold a password: never printed (percent-encode a `/`,
    `?`, `#` or `@` in it)."""
    prefix: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")] = "holyroute"
    """Every Redis key starts with it: one prefix per deployment."""
    timeout_ms: Annotated[float, Field(gt=0, le=10_000)] = 10.0
    """Per Redis command; slower counts as Redis down."""
    sync_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    """How often measurements and spend are sent and snapshots re-read."""
    lease_fraction: Annotated[float, Field(ge=0, le=0.2)] = 0.01
    """The most of a shared rpm/tpm limit one process may take ahead of use (0.01: 1%; 0: a round trip per request)."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        scheme, sep, _ = text.partition("://")
        if scheme.lower() not in SCHEMES:
            # Name only the scheme, and only when it looks like one: the rest may hold a password.
            got = f"a {scheme}:// URL" if sep and scheme.isalnum() and len(scheme) <= 10 else "no scheme"
            raise ValueError(
                "state.url must start with redis://, rediss:// or unix:// (or redis+cluster://, redis+sentinel:// "
                f"and their rediss+ forms; got {got}); for example redis://127.0.0.1:6379/0"
            )
        # Read here as the client will be built from it, so that a URL that cannot be read fails now, with no part
        # of it quoted (redis-py's own errors do quote it: "Port could not be cast to integer value as '<password>'").
        found = parse_redis_url(text)
        if isinstance(found, str):
            raise ValueError(f"{found}; for example redis://:password@127.0.0.1:6379/0")
        return value


class Config(_Model):
    """A whole holyroute configuration. Build one with :func:`load_config` or ``Config.load(...)``."""

    endpoints: dict[str, Endpoint]
    """The upstream endpoints, by name."""
    routes: dict[str, Route]
    """The model aliases the application sends, by alias."""
    prices: dict[str, Price] = Field(default_factory=dict)
    """USD per 1M tokens by upstream model; overrides the genai-prices catalogue."""
    retry: Retry = Field(default_factory=Retry)
    """Attempts, backoff, cooldowns, deadlines and the retry budget of every call."""
    health: Health = Field(default_factory=Health)
    """Passive health: outlier ejection judged from real calls."""
    state: State = Field(default_factory=State)
    """Where the state every process must agree on lives."""
    budgets: list[Budget] = Field(default_factory=list)
    """USD caps per route, endpoint or request tag."""
    alerts: list[AlertRule] = Field(default_factory=list)
    """Thresholds on routes' and endpoints' calls over a rolling window."""
    context: ContextFit = Field(default_factory=ContextFit)
    """How a request's input tokens are counted for context fit, rules and cost ceilings."""
    cache: Cache = Field(default_factory=Cache)
    """Where the response cache keeps answers (memory or Redis) and how many; off until a route sets `cache`."""

    @classmethod
    def load(cls, source: str | os.PathLike[str] | Mapping[str, Any] | Config) -> Config:
        """Load from a YAML/TOML path, a mapping or an existing Config (returned as is)."""
        return load_config(source)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a configuration file, generated from the models that validate it (``holyroute schema``).

    Editors use it to complete and check ``holyroute.yaml`` (for example with the YAML language server's
    ``# yaml-language-server: $schema=holyroute.schema.json``). It describes the file as written, before
    ``${VAR}`` references are replaced, so the cross-key checks (unknown endpoints, weights) are left to
    :func:`load_config`.
    """
    schema = Config.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "holyroute configuration"
    return schema


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | Config | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build a validated :class:`Config`.

    ``source`` is a path to a ``.yaml``/``.yml``/``.toml`` file, a mapping, a ``Config``, or ``None`` to read
    ``$HOLYROUTE_CONFIG`` or ``./holyroute.yaml``. Raises :class:`ConfigError` listing every problem found.

    >>> cfg = load_config({"endpoints": {"main": {"base_url": "http://127.0.0.1:1/v1"}},
    ...                    "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["main"]}]}}})
    >>> sorted(cfg.routes)
    ['chat']
    """
    if isinstance(source, Config):
        return source
    env = os.environ if environ is None else environ
    origin = "configuration"
    if source is None:
        source = _default_path(env)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        origin = str(path)
        raw = _read_file(path)
    elif isinstance(source, Mapping):
        raw = source
    else:
        raise ConfigError(f"cannot load a configuration from {type(source).__name__}; pass a path, a dict or a Config")
    problems: list[str] = []
    unset: set[str] = set()  # where a variable is missing: a stand-in value is validated there, its errors dropped
    interpolated = _interpolate(raw, (), env, problems, unset)
    if not isinstance(interpolated, Mapping):
        raise ConfigError(f"{origin}: the top level must be a mapping with 'endpoints' and 'routes'")
    config, found = _validate(interpolated)
    problems += [problem for problem in found if problem.split(": ", 1)[0] not in unset]
    if problems:
        raise ConfigError(_summary(origin, problems))
    assert config is not None
    return config


def _validate(raw: Mapping[str, Any]) -> tuple[Config | None, list[str]]:
    """Every problem at once: the schema's, and the cross-key checks' even when the schema found some.

    When the schema rejects values that can be left out (an unknown key, a bad value where a default exists), they
    are left out of a copy that is validated again, so that the cross-key checks (unknown endpoints and aliases,
    weights) still run; a problem that cannot be left out (a required key) stops there. The config is returned only
    when there is no problem at all."""
    try:
        return _checked(Config.model_validate(raw))
    except ValidationError as exc:
        problems = _pydantic_problems(exc, raw)
        errors = exc.errors(include_url=False, include_input=False)
    pruned: Any = raw
    for _ in range(3):  # bounded: each round removes at least one key, and nested problems surface in a round or two
        pruned = _without(pruned, errors)
        if pruned is None:
            return None, problems
        try:
            config = Config.model_validate(pruned)
        except ValidationError as again:
            errors = again.errors(include_url=False, include_input=False)
            continue
        seen = {problem.split(": ", 1)[0] for problem in problems}
        return None, problems + [p for p in _cross_check(config) if p.split(": ", 1)[0] not in seen]
    return None, problems


def _checked(config: Config) -> tuple[Config | None, list[str]]:
    problems = _cross_check(config)
    return (None if problems else config), problems


def _without(raw: Any, errors: Iterable[Any]) -> Any:
    """A copy of ``raw`` without the keys ``errors`` point at, or None when one of them cannot be left out (it is
    required, or names an entry others may refer to, such as an endpoint)."""
    import copy

    pruned = copy.deepcopy(raw)
    done: set[tuple[str | int, ...]] = set()
    for error in errors:
        loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and _is_tag(part)))
        if loc in done:  # a union reports each branch at one location
            continue
        done.add(loc)
        if not loc or not isinstance(loc[-1], str):
            return None
        *parent_path, key = loc
        parent: Any = pruned
        for part in parent_path:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                return None
        if not isinstance(parent, dict) or key not in parent:
            return None
        if error["type"] != "extra_forbidden":
            model = _model_at(tuple(parent_path))
            field = model.model_fields.get(key) if model is not None else None
            if field is None or field.is_required():
                return None
        del parent[key]
    return pruned


def _model_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model that validates the mapping at ``path`` in a configuration, or None (a free-form level)."""
    annotation: Any = Config
    for part in path:
        annotation = _inner(annotation, part)
        if annotation is None:
            return None
    return _as_model(annotation)


def _as_model(annotation: Any) -> type[BaseModel] | None:
    """The model ``annotation`` is, possibly optional or annotated; None for a mapping, a list or a plain type."""
    if getattr(annotation, "__metadata__", None) is not None:  # Annotated[X, ...]
        return _as_model(annotation.__origin__)
    if isinstance(annotation, type):
        return annotation if issubclass(annotation, BaseModel) else None
    if getattr(annotation, "__origin__", None) in (dict, list):
        return None
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _as_model(arg)
        if found is not None:
            return found
    return None


def _inner(annotation: Any, part: str | int) -> Any:
    """The annotation of ``part`` inside a value of type ``annotation``; None when there is none."""
    if getattr(annotation, "__metadata__", None) is not None:  # Annotated[X, ...]
        return _inner(annotation.__origin__, part)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part)) if isinstance(part, str) else None
        return None if field is None else field.annotation
    origin = getattr(annotation, "__origin__", None)
    args: tuple[Any, ...] = tuple(getattr(annotation, "__args__", ()) or ())
    if origin is dict and isinstance(part, str) and len(args) == 2:
        return args[-1]
    if origin is list and isinstance(part, int) and args:
        return args[0]
    for arg in args:  # a union: the first branch that has it
        found = _inner(arg, part)
        if found is not None:
            return found
    return None


def default_config_path(env: Mapping[str, str]) -> Path | None:
    """Where a configuration is read from when none is given: ``$HOLYROUTE_CONFIG``, else the first of
    ``./holyroute.yaml``, ``./holyroute.yml`` and ``./holyroute.toml`` that exists; None when there is none.
    :func:`load_config` and every ``holyroute`` command use this one rule."""
    explicit = env.get("HOLYROUTE_CONFIG")
    if explicit:
        return Path(explicit)
    for name in ("holyroute.yaml", "holyroute.yml", "holyroute.toml"):
        if Path(name).is_file():
            return Path(name)
    return None


def _default_path(env: Mapping[str, str]) -> Path:
    found = default_config_path(env)
    if found is not None:
        return found
    raise ConfigError(
        "no configuration given: pass a path or dict to holyroute.client(...), set HOLYROUTE_CONFIG, "
        "or create ./holyroute.yaml"
    )


def _read_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; check the path or set HOLYROUTE_CONFIG") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if suffix in (".yaml", ".yml", ".json", ""):
        import yaml

        # `{api_key: ${KEY}}` is how people write it, but `{` starts a YAML flow mapping: shield the references
        # from the parser and put them back for interpolation, which then knows each one's key path.
        shielded: dict[str, str] = {}

        def shield(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$$"
            token = f"__holyroute_ref_{len(shielded)}__"
            shielded[token] = match.group(0)
            return token

        try:
            loaded = yaml.safe_load(_ENV_PATTERN.sub(shield, text))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return _unshield({} if loaded is None else loaded, shielded)
    raise ConfigError(f"{path}: unknown file type {suffix!r}; use .yaml, .yml or .toml")


def _unshield(value: Any, shielded: Mapping[str, str]) -> Any:
    if not shielded:
        return value
    if isinstance(value, str):
        return _SHIELD_PATTERN.sub(lambda match: shielded.get(match.group(0), match.group(0)), value)
    if isinstance(value, Mapping):
        return {_unshield(key, shielded): _unshield(item, shielded) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshield(item, shielded) for item in value]
    return value


def _interpolate(
    value: Any, path: tuple[str | int, ...], env: Mapping[str, str], problems: list[str], unset: set[str]
) -> Any:
    """``value`` with ``${NAME}`` and ``${NAME:-default}`` replaced. A missing variable is a problem, and a stand-in
    takes its place (its key path is added to ``unset``) so that the rest is still validated."""
    if isinstance(value, str):
        if "$" not in value:
            return value
        missing = False

        def substitute(match: re.Match[str]) -> str:
            nonlocal missing
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            found = env.get(name)
            if found is not None and (found or default is None):
                return found
            if default is not None:
                return default
            problems.append(
                f"{_dotted(path)}: environment variable {name} is not set; "
                f"export {name}=... or write ${{{name}:-default}}"
            )
            missing = True
            return ""

        replaced = _ENV_PATTERN.sub(substitute, value)
        if not missing:
            return replaced
        unset.add(_dotted(path))
        last = path[-1] if path else ""
        return {"base_url": "http://unset.invalid", "url": "redis://unset.invalid"}.get(str(last), "unset")
    if isinstance(value, Mapping):
        return {key: _interpolate(item, (*path, str(key)), env, problems, unset) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, (*path, index), env, problems, unset) for index, item in enumerate(value)]
    return value


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _pydantic_problems(exc: ValidationError, raw: Mapping[str, Any]) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        # Drop pydantic's internal tags (union branches such as "str" or "EndpointRef", validator wrappers, "[key]")
        # from the location; keep names people chose, such as a header "X-Tenant" or an endpoint "Azure".
        loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and _is_tag(part)))
        kind = error["type"]
        if kind == "extra_forbidden":
            *parent, key = loc
            known = _known_keys(tuple(parent), raw)
            hint = difflib.get_close_matches(str(key), known, n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else f"known keys: {', '.join(sorted(known))}"
            problems.append(f"{_dotted(loc)}: unknown key; {fix}")
        elif kind == "missing":
            problems.append(f"{_dotted(loc)}: required; add it")
        else:
            message = error["msg"]
            if isinstance(message, str) and message.startswith("Value error, "):
                message = message[len("Value error, ") :]
            problems.append(f"{_dotted(loc)}: {message}")
    # One problem per location: a union ("name" or {endpoint, model}) reports each branch; keep the first.
    seen: set[str] = set()
    unique = []
    for problem in problems:
        where = problem.split(": ", 1)[0]
        if where not in seen:
            seen.add(where)
            unique.append(problem)
    return unique


def _is_tag(part: str) -> bool:
    if part in ("str", "float", "int", "constrained-float", "[key]") or part.startswith(("function-", "lax-")):
        return True
    return part[:1].isupper() and part.split("[", 1)[0] in _model_names()


@functools.cache
def _model_names() -> frozenset[str]:
    names: set[str] = set()
    todo: list[type] = [BaseModel]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__.split("[", 1)[0])
        todo.extend(cls.__subclasses__())
    return frozenset(names)


def _known_keys(parent: tuple[str | int, ...], raw: Mapping[str, Any]) -> list[str]:
    model: type[BaseModel] | None = Config
    for part in parent:
        if model is None:
            break
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            # A free-form mapping level (endpoint names, route aliases): the model stays the value type.
            continue
        model = _model_of(field.annotation)
    return sorted(model.model_fields) if model is not None else []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    for arg in getattr(annotation, "__metadata__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    origin = getattr(annotation, "__origin__", None)
    return _model_of(origin) if origin is not None and origin is not annotation else None


def _cross_check(config: Config) -> list[str]:
    """Checks that span keys: references to endpoints and aliases, and weights."""
    problems: list[str] = []
    if not config.routes:
        problems.append("routes: no route defined; add at least one alias under 'routes'")
    for alias, route in config.routes.items():
        problems += _check_route(config, alias, route)
    problems += _check_endpoints(config)
    problems += _check_budgets(config)
    problems += _check_alerts(config)
    if config.retry.backoff_max_s < config.retry.backoff_initial_s:
        problems.append("retry.backoff_max_s: smaller than backoff_initial_s; raise it")
    return problems


def _known(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "(none defined)"


def _check_route(config: Config, alias: str, route: Route) -> list[str]:
    """A route's arms, shadow, rules and fallbacks name endpoints and aliases that exist."""
    problems: list[str] = []
    known_endpoints = _known(config.endpoints)
    known_routes = _known(config.routes)
    base = f"routes.{alias}"
    arms: set[str] = set()
    where = "rollout" if route.rollout is not None else "targets"
    for t_index, target in enumerate(route.arms):
        at = (
            f"{base}.{where}[{t_index}]" if where == "targets" else f"{base}.rollout.{('stable', 'candidate')[t_index]}"
        )
        if target.arm in arms:
            problems.append(f"{at}: arm '{target.arm}' appears twice in this route; give one of them a distinct 'name'")
        arms.add(target.arm)
        for e_index, entry in enumerate(target.endpoints):
            name = entry if isinstance(entry, str) else entry.endpoint
            if name not in config.endpoints:
                hint = difflib.get_close_matches(name, list(config.endpoints), n=1)
                maybe = f" (did you mean '{hint[0]}'?)" if hint else ""
                problems.append(
                    f"{at}.endpoints[{e_index}]: unknown endpoint '{name}'{maybe}; known: {known_endpoints}"
                )
    if route.shadow is not None:
        for e_index, entry in enumerate(route.shadow.endpoints):
            name = entry if isinstance(entry, str) else entry.endpoint
            if name not in config.endpoints:
                problems.append(
                    f"{base}.shadow.endpoints[{e_index}]: unknown endpoint '{name}'; known: {known_endpoints}"
                )
    if route.rollout is None and not any(target.weight > 0 for target in route.targets):
        problems.append(f"{base}.targets: every weight is 0; give at least one target a positive weight")
    problems += compile_rules(route.rules, known_aliases=config.routes, at=f"{base}.rules")[1]
    for r_index, rule in enumerate(route.rules):
        if isinstance(rule.use, Target):
            for e_index, entry in enumerate(rule.use.endpoints):
                name = entry if isinstance(entry, str) else entry.endpoint
                if name not in config.endpoints:
                    problems.append(
                        f"{base}.rules[{r_index}].use.endpoints[{e_index}]: unknown endpoint '{name}'; "
                        f"known: {known_endpoints}"
                    )
    for f_index, fallback in enumerate(route.fallbacks):
        if fallback == alias:
            problems.append(f"{base}.fallbacks[{f_index}]: a route cannot fall back to itself")
        elif fallback not in config.routes:
            problems.append(f"{base}.fallbacks[{f_index}]: unknown route '{fallback}'; known: {known_routes}")
    return problems


def _check_endpoints(config: Config) -> list[str]:
    problems: list[str] = []
    for name, endpoint in config.endpoints.items():
        own = {header for header, _ in endpoint.request_headers()}
        for f_index, header in enumerate(endpoint.forward_headers):
            if header in own:
                problems.append(
                    f"endpoints.{name}.forward_headers[{f_index}]: '{header}' is set by this endpoint itself (its "
                    "key, organization, project or headers); the endpoint's value is always sent, never the caller's: "
                    "remove it"
                )
        if endpoint.auth != "none" and endpoint.api_key is None:
            continue  # keyless local servers are common; the upstream will answer 401 if it needs one
        if endpoint.auth == "none" and endpoint.api_key is not None:
            problems.append(f"endpoints.{name}.auth: 'none' but an api_key is set; remove one of them")
    return problems


def _check_budgets(config: Config) -> list[str]:
    problems: list[str] = []
    known_endpoints = _known(config.endpoints)
    known_routes = _known(config.routes)
    for b_index, budget in enumerate(config.budgets):
        at = f"budgets[{b_index}]"
        if budget.scope == "route":
            if budget.name not in config.routes:
                problems.append(f"{at}.name: unknown route '{budget.name}'; known: {known_routes}")
            elif budget.action == "fallback" and not config.routes[budget.name].fallbacks:
                problems.append(
                    f"{at}.action: 'fallback' but route '{budget.name}' has no fallbacks; add "
                    f"routes.{budget.name}.fallbacks (a cheaper alias) or use action: block"
                )
        elif budget.scope == "endpoint" and budget.name not in config.endpoints:
            problems.append(f"{at}.name: unknown endpoint '{budget.name}'; known: {known_endpoints}")
    return problems


def _check_alerts(config: Config) -> list[str]:
    problems: list[str] = []
    known_endpoints = _known(config.endpoints)
    known_routes = _known(config.routes)
    for a_index, alert in enumerate(config.alerts):
        at = f"alerts[{a_index}]"
        names = config.routes if alert.scope == "route" else config.endpoints
        if alert.name != "*" and alert.name not in names:
            known = known_routes if alert.scope == "route" else known_endpoints
            problems.append(f"{at}.name: unknown {alert.scope} '{alert.name}'; known: {known} (or * for each)")
        if alert.resolve_below is not None and alert.resolve_below > alert.above:
            problems.append(f"{at}.resolve_below: above 'above' ({alert.above:g}); it must be at or under it")
        if alert.window <= 0:
            problems.append(f"{at}.window: must be positive, such as 5m")
    return problems


def _summary(origin: str, problems: list[str]) -> str:
    head = f"invalid holyroute configuration ({origin}): {len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return "\n".join([head, *(f"  - {problem}" for problem in problems)])
