"""Context-window fit: how big a request is, and whether a model can hold it.

Decides three things before a call is sent: the request's input size in tokens (:func:`estimate_input_tokens`), the
output it asks for (:func:`requested_output_tokens`, the boundary's, clamped), and whether a model's limits hold both
(:func:`fits`, which says why not in words). The limits come from :data:`BUILTIN_LIMITS`, a dated table
(:data:`CONTEXT_AS_OF`) of the context windows and output caps the providers published for the models in the
built-in price table; they change, so a target's ``context_window`` / ``max_output_tokens`` override them
(:func:`limits_for`). A model missing from the table is never judged too small: it has no limits here, and the
upstream decides.

The estimate is cheap by default: UTF-8 bytes / 4 over the text of the messages, input or prompt (characters / 4 for
ASCII text; bytes keep CJK text, near one token a character, from being undercounted fourfold), plus a few tokens per
message and a flat guess per image. Exact counts use ``tiktoken``'s ``o200k_base`` (the optional extra) only when its
encoding file is already in tiktoken's local cache: this module never downloads anything and performs no I/O on the
request path (the one read of the cached file happens once, on first use or when :func:`tiktoken_encoding` is
called at load).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

from holyroute.boundary.parse import requested_output_tokens
from holyroute.config.prices import normalise_model_name

__all__ = [
    "BUILTIN_LIMITS",
    "CONTEXT_AS_OF",
    "DEFAULT_OUTPUT_RESERVE",
    "ModelLimits",
    "TokenEncoder",
    "estimate_input_tokens",
    "find_limits",
    "fits",
    "limits_for",
    "requested_output_tokens",
    "tiktoken_encoding",
]

CONTEXT_AS_OF = "2025-11-01"

#: Tokens kept free for the answer when a request names no max output: input + this must fit the window. A request
#: that fills a window to its last tokens is either refused or cut off after a few words, so a model whose window
#: leaves less room than this is skipped in favour of one that can answer. Capped at the model's own max output.
DEFAULT_OUTPUT_RESERVE: Final = 1024

#: Tokens a chat message or a Responses input item costs beyond its text (role, separators), and the tokens that
#: prime the reply: OpenAI's published counting recipe for its chat models.
_PER_MESSAGE: Final = 3
_REPLY_PRIMING: Final = 3
#: A flat guess per image: gpt-4o's cost of one 1024x1024 image at high detail (85 at low detail). Images are not
#: downloaded or decoded to measure them, and their base64 data is never counted as text.
_IMAGE_TOKENS: Final = 765
_IMAGE_TOKENS_LOW: Final = 85
_IMAGE_TYPES: Final = frozenset({"image_url", "input_image", "image"})
#: The keys of a message, content part or input item whose values are text the model reads (or hold such text).
_TEXT_KEYS: Final = (
    "content",
    "text",
    "refusal",
    "name",
    "arguments",
    "output",
    "summary",
    "tool_calls",
    "function_call",
    "function",
)
#: tiktoken's encoding files: the URL tiktoken keys its cache by, and the SHA-256 it checks them against.
_TIKTOKEN_FILES: Final = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """What one model holds, in tokens: ``context_window`` is input + output together; ``max_output_tokens`` caps
    the answer (``None``: only the window does); ``max_input_tokens`` caps the input where a provider sets it below
    window - max output (``None``: only the window does). ``model`` names the model in reasons."""

    model: str
    context_window: int
    max_output_tokens: int | None = None
    max_input_tokens: int | None = None


def _limits(window: int, output: int, max_input: int | None = None) -> ModelLimits:
    return ModelLimits("", window, output, max_input)


#: Context windows and output caps as the providers published them on :data:`CONTEXT_AS_OF`, for the chat models of
#: ``config.prices.BUILTIN_PRICES`` (embedding models are left out: their limit is per input string, not per request).
#: Override per target with ``context_window`` / ``max_output_tokens``.
BUILTIN_LIMITS: Final[dict[str, ModelLimits]] = {
    # OpenAI. The gpt-5 family's 400,000 is input + output: input alone is capped at 272,000 (= 400,000 - 128,000).
    "gpt-5": _limits(400_000, 128_000, 272_000),
    "gpt-5-mini": _limits(400_000, 128_000, 272_000),
    "gpt-5-nano": _limits(400_000, 128_000, 272_000),
    "gpt-4.1": _limits(1_047_576, 32_768),
    "gpt-4.1-mini": _limits(1_047_576, 32_768),
    "gpt-4.1-nano": _limits(1_047_576, 32_768),
    "gpt-4o": _limits(128_000, 16_384),
    "gpt-4o-mini": _limits(128_000, 16_384),
    "o1": _limits(200_000, 100_000),
    "o3": _limits(200_000, 100_000),
    "o3-mini": _limits(200_000, 100_000),
    "o4-mini": _limits(200_000, 100_000),
    "gpt-3.5-turbo": _limits(16_385, 4_096),
    "gpt-3.5-turbo-instruct": _limits(4_096, 4_096),
    # Anthropic: the standard 200k window (Sonnet 4 and 4.5 offer 1M in beta, behind a header: set context_window).
    "claude-opus-4-1": _limits(200_000, 32_000),
    "claude-opus-4": _limits(200_000, 32_000),
    "claude-sonnet-4-5": _limits(200_000, 64_000),
    "claude-sonnet-4": _limits(200_000, 64_000),
    "claude-haiku-4-5": _limits(200_000, 64_000),
    "claude-3-5-haiku": _limits(200_000, 8_192),
    # Google
    "gemini-2.5-pro": _limits(1_048_576, 65_536),
    "gemini-2.5-flash": _limits(1_048_576, 65_536),
    "gemini-2.5-flash-lite": _limits(1_048_576, 65_536),
    "gemini-2.0-flash": _limits(1_048_576, 8_192),
    # DeepSeek (V3.2): "128K" is 131,072 as the API enforces it; max_tokens up to 8,192 (chat) and 65,536 (reasoner,
    # its reasoning included).
    "deepseek-chat": _limits(131_072, 8_192),
    "deepseek-reasoner": _limits(131_072, 65_536),
}


def find_limits(model: str, table: Mapping[str, ModelLimits] = BUILTIN_LIMITS) -> ModelLimits | None:
    """The limits of an upstream model, named as given; dated snapshots and provider prefixes fall back to their
    base model. ``None`` when the table does not know it.

    >>> find_limits("openai/gpt-4o-2024-08-06")
    ModelLimits(model='openai/gpt-4o-2024-08-06', context_window=128000, max_output_tokens=16384, max_input_tokens=None)
    """
    for name in normalise_model_name(model):
        row = table.get(name)
        if row is not None:
            return replace(row, model=model)
    return None


def limits_for(
    model: str,
    *,
    context_window: int | None = None,
    max_output_tokens: int | None = None,
    table: Mapping[str, ModelLimits] = BUILTIN_LIMITS,
) -> ModelLimits | None:
    """A target's limits: its own ``context_window`` / ``max_output_tokens`` where set, the table's otherwise.

    ``None`` when no window is known (a model missing from the table, without ``context_window``): such a target is
    never skipped for size. Call it once per target at load, not per request.
    """
    found = find_limits(model, table)
    if found is None:
        if context_window is None:
            return None
        return ModelLimits(model, context_window, max_output_tokens)
    if context_window is not None:
        # A window set by hand replaces the published one, and with it the input cap derived from it.
        found = replace(found, context_window=context_window, max_input_tokens=None)
    if max_output_tokens is not None:
        found = replace(found, max_output_tokens=max_output_tokens)
    return found


def fits(
    limits: ModelLimits,
    input_tokens: int,
    output_tokens: int | None,
    *,
    reserve: int = DEFAULT_OUTPUT_RESERVE,
) -> str | None:
    """``None`` when the model holds the request, else why not, naming the sizes.

    The input and the requested output must fit the window together, the output must be within the model's max
    output, and the input within its input cap. A request that names no output (``output_tokens`` ``None``) needs
    ``reserve`` tokens left for the answer (capped at the model's max output): see :data:`DEFAULT_OUTPUT_RESERVE`.

    >>> gpt_4o = find_limits("gpt-4o")
    >>> fits(gpt_4o, 150_000, 4_096)
    'needs 150,000 input + 4,096 output tokens; gpt-4o holds 128,000 (max output 16,384)'
    >>> fits(gpt_4o, 100_000, 4_096) is None
    True
    """
    cap = limits.max_output_tokens
    holds = f"{limits.model} holds {limits.context_window:,}" + (f" (max output {cap:,})" if cap is not None else "")
    if output_tokens is not None and cap is not None and output_tokens > cap:
        return f"asks for {output_tokens:,} output tokens; {limits.model} gives at most {cap:,}"
    if limits.max_input_tokens is not None and input_tokens > limits.max_input_tokens:
        return (
            f"needs {input_tokens:,} input tokens; {limits.model} takes at most {limits.max_input_tokens:,} "
            f"of input (window {limits.context_window:,})"
        )
    if output_tokens is not None:
        if input_tokens + output_tokens > limits.context_window:
            return f"needs {input_tokens:,} input + {output_tokens:,} output tokens; {holds}"
        return None
    room = reserve if cap is None else min(reserve, cap)
    if input_tokens + room > limits.context_window:
        return (
            f"needs {input_tokens:,} input tokens + {room:,} reserved for the answer (no max output requested); {holds}"
        )
    return None


# ---- estimating the input -------------------------------------------------------------------------------------


class TokenEncoder(Protocol):
    """What an exact count needs from a tokenizer: a ``tiktoken.Encoding`` fits."""

    def encode_ordinary(self, text: str) -> list[int]: ...


def estimate_input_tokens(
    data: Mapping[str, Any],
    body: bytes,
    *,
    exact: bool = False,
    encoding: TokenEncoder | None = None,
) -> int:
    """The input tokens of a request: its messages (chat), input and instructions (responses, embeddings) or prompt
    (completions), with its tool definitions; only their text is counted, never the JSON around it.

    By default a cheap estimate: UTF-8 bytes / 4, rounded up. With ``exact``, tokens are counted with ``encoding``
    or, when none is given, :func:`tiktoken_encoding` (``o200k_base``), falling back to the estimate when that is
    not available offline. Token-array prompts count their tokens either way. A body with none of those fields
    (an operation this does not know) is estimated as its size / 4.

    >>> estimate_input_tokens({"messages": [{"role": "user", "content": "Summarise this, please."}]}, b"")
    12
    """
    if exact and encoding is None:
        encoding = tiktoken_encoding()
    if not exact or encoding is None:
        tally = _Tally(_utf8_len)
        if not _walk_request(data, tally):
            return len(body) // 4
        return -(-tally.units // 4) + tally.tokens
    tally = _Tally(lambda text: len(encoding.encode_ordinary(text)))
    if not _walk_request(data, tally):
        return len(body) // 4
    return tally.units + tally.tokens


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class _Tally:
    """Text units (bytes, or tokens when exact) and tokens counted outside the text (overheads, images, arrays)."""

    __slots__ = ("measure", "tokens", "units")

    def __init__(self, measure: Callable[[str], int]) -> None:
        self.measure = measure
        self.units = 0
        self.tokens = 0

    def text(self, value: str) -> None:
        if value:
            self.units += self.measure(value)


def _walk_request(data: Mapping[str, Any], tally: _Tally) -> bool:
    """Count the request's input into ``tally``; false when it has none of the fields this knows."""
    known = False
    messages = data.get("messages")
    if isinstance(messages, list):
        known = True
        tally.tokens += _REPLY_PRIMING
        for message in messages:
            tally.tokens += _PER_MESSAGE
            _walk_content(message, tally)
    for key in ("input", "prompt"):
        value = data.get(key)
        if value is None:
            continue
        known = True
        if isinstance(value, str):
            tally.text(value)
        elif isinstance(value, list):
            _walk_items(value, tally)
    instructions = data.get("instructions")
    if isinstance(instructions, str):
        known = True
        tally.text(instructions)
    for key in ("tools", "functions"):
        value = data.get(key)
        if isinstance(value, list):
            _walk_everything(value, tally)
    return known


def _walk_items(items: list[Any], tally: _Tally) -> None:
    """A list under ``input`` or ``prompt``: strings, token arrays, or Responses input items."""
    if items and all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        tally.tokens += len(items)  # one prompt as token ids
        return
    for item in items:
        if isinstance(item, str):
            tally.text(item)
        elif isinstance(item, list):
            tally.tokens += sum(1 for token in item if isinstance(token, int))  # a batch of token-id prompts
        elif isinstance(item, Mapping):
            tally.tokens += _PER_MESSAGE
            _walk_content(item, tally)


def _walk_content(value: Any, tally: _Tally) -> None:
    """A message, content part or input item: the text under the keys that hold text, a flat guess per image."""
    if isinstance(value, str):
        tally.text(value)
    elif isinstance(value, list):
        for item in value:
            _walk_content(item, tally)
    elif isinstance(value, Mapping):
        kind = value.get("type")
        if kind in _IMAGE_TYPES:
            tally.tokens += _IMAGE_TOKENS_LOW if _image_detail(value) == "low" else _IMAGE_TOKENS
            return
        for key in _TEXT_KEYS:
            inner = value.get(key)
            if inner is not None:
                _walk_content(inner, tally)


def _image_detail(part: Mapping[str, Any]) -> object:
    inner = part.get("image_url")
    return inner.get("detail") if isinstance(inner, Mapping) else part.get("detail")


def _walk_everything(value: Any, tally: _Tally) -> None:
    """Tool definitions: every key and string (names, descriptions, schema properties) is read by the model."""
    if isinstance(value, str):
        tally.text(value)
    elif isinstance(value, list):
        for item in value:
            _walk_everything(item, tally)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            tally.text(str(key))
            _walk_everything(item, tally)


# ---- tiktoken, offline only -------------------------------------------------------------------------------------


@functools.cache
def tiktoken_encoding(name: str = "o200k_base") -> TokenEncoder | None:
    """tiktoken's encoding ``name`` when tiktoken is installed and the encoding is already in its local cache
    (``$TIKTOKEN_CACHE_DIR``, ``$DATA_GYM_CACHE_DIR`` or ``<tmp>/data-gym-cache``, checked against tiktoken's own
    SHA-256); ``None`` otherwise. Never downloads: tiktoken fetches a missing encoding from the internet, which a
    request path must not do. Remembered after the first call (``tiktoken_encoding.cache_clear()`` to look again);
    call it at load to pay the one read of the file there.
    """
    try:
        tiktoken = importlib.import_module("tiktoken")
    except ImportError:
        return None
    cached = _tiktoken_cache_file(name)
    if cached is None:
        return None
    encoding: TokenEncoder = tiktoken.get_encoding(name)
    return encoding


def _tiktoken_cache_file(name: str) -> str | None:
    """The path of encoding ``name`` in tiktoken's cache when it is there and intact (tiktoken would replace a
    damaged file by downloading it)."""
    known = _TIKTOKEN_FILES.get(name)
    if known is None:
        return None
    url, sha256 = known
    env = os.environ
    if "TIKTOKEN_CACHE_DIR" in env:
        cache_dir = env["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in env:
        cache_dir = env["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return None  # caching disabled: tiktoken would download every time
    path = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
    try:
        with open(path, "rb") as file:
            content = file.read()
    except OSError:
        return None
    return path if hashlib.sha256(content).hexdigest() == sha256 else None
