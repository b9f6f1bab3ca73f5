"""Request rules: which alias or target a request goes to, decided from its headers, its body and its size.

A route's ``rules`` are tried in order before its weighted split; the first whose ``when`` holds sends the request to
its ``use`` (another alias, or an inline target), and when none holds, the route's own targets take it. This module
decides what a valid rule is (each problem is named with its key path, at load) and evaluates compiled rules against
one request: plain closures over the parsed body, a header view and the estimated prompt size, with no pydantic on
the hot path. It never performs I/O and never reads a clock; load-time problems never echo a header's
value from a request (there is none at load), and :meth:`CompiledRules.explain` shows request values shortened.

The condition language (several keys in one mapping must all hold)::

    when:
      header: {x-task: complex_reasoning}        # request headers; names case-insensitive, values exact
      metadata: {tier: {in: [free, trial]}}      # the body's `metadata` object
      param: {reasoning.effort: high}            # a body field; dots walk into objects
      prompt_tokens: {gt: 100000}                # the estimated input size the caller passes in
      all: [{...}, {...}]                        # every one holds
      any: [{...}, {...}]                        # at least one holds
      not: {...}                                 # does not hold

A plain value means equality; ``{eq: v}``, ``{in: [..]}``, ``{gt|gte|lt|lte: n}``, ``{exists: true|false}`` and
``{regex: "..."}`` (Python syntax, ``re.search``: anchor with ``^...$``) are the operators, and several in one mapping
must all hold (``{gte: 1000, lt: 50000}``). A missing value and JSON ``null`` are the same: absent. A string in the
request equals a configured number or boolean written the same way (a header ``x-priority: 1`` equals ``1``, a
header ``x-debug: true`` equals ``true``); numeric operators read a numeric string as its number.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar, overload

from pydantic import BaseModel, ConfigDict

__all__ = [
    "DEFAULT_RULE",
    "CompiledRules",
    "HeaderLookup",
    "MatchedRule",
    "Rule",
    "RuleVerdict",
    "compile_rules",
]

T = TypeVar("T")
R = TypeVar("R")

#: The label of "no rule matched": the route's own targets took the request. No rule may be named this.
DEFAULT_RULE: Final = "default"

_CONDITIONS: Final = ("header", "metadata", "param", "prompt_tokens", "all", "any", "not")
_OPERATORS: Final = ("eq", "in", "gt", "gte", "lt", "lte", "exists", "regex")
_TOKEN_OPERATORS: Final = ("eq", "in", "gt", "gte", "lt", "lte")
_COMPARE_SIGNS: Final = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_COMPARE_FUNCTIONS: Final = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
_HEADER_NAME: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SHOW_CHARS: Final = 40


class HeaderLookup(Protocol):
    """The request headers as the core holds them (``httpx2.Headers`` and a lowercase-keyed ``dict`` both fit)."""

    def get(self, key: str, /) -> str | None: ...


class Rule(BaseModel, Generic[T]):
    """One rule of a route: when ``when`` holds, the request goes to ``use``.

    ``use`` is an alias (a route name) or an inline target; ``T`` is the inline target's model, so the configuration
    declares ``rules: list[Rule[Target]]`` and pydantic validates inline targets with their key paths. ``when`` is
    checked by :func:`compile_rules`, which names each problem precisely. ``name`` labels the rule in events and
    reports (default: ``rules[<index>]``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    when: dict[str, Any]
    """The condition: `header`, `metadata`, `param`, `prompt_tokens`, combined with `all`, `any`, `not`
    (see Routing)."""
    use: str | T
    """Where a matching request goes: an alias (its split, fallbacks and budgets) or an inline target."""
    name: str | None = None
    """The rule's label in events and reports (default: `rules[<index>]`)."""


@dataclass(frozen=True, slots=True)
class MatchedRule(Generic[R]):
    """The rule that decided a request: its position, its label (``name`` or ``rules[2]``) and where it sends it."""

    index: int
    label: str
    use: R


@dataclass(frozen=True, slots=True)
class RuleVerdict(Generic[R]):
    """One rule judged against one request: whether its ``when`` held, and in words why (or why not)."""

    index: int
    label: str
    matched: bool
    reason: str
    use: R


_Test = Callable[[HeaderLookup, Mapping[str, Any], int], bool]
_Why = Callable[[HeaderLookup, Mapping[str, Any], int], tuple[bool, str]]
_Getter = Callable[[HeaderLookup, Mapping[str, Any], int], Any]
_Pred = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class _Node:
    """A compiled condition: ``test`` decides (the hot path), ``why`` decides and says why (explain)."""

    test: _Test
    why: _Why
    leaves: tuple[_Node, ...] = ()  # for an `all`: its conditions, so nested `all`s flatten into one loop


class CompiledRules(Generic[R]):
    """A route's rules, compiled: :meth:`match` picks the first rule whose condition holds, :meth:`explain` says
    what each rule made of a request. Immutable and safe to share across threads."""

    __slots__ = ("_memo_headers", "_nodes", "_rules", "header_names", "uses_prompt_tokens")

    def __init__(
        self,
        rules: Sequence[tuple[_Node, MatchedRule[R]]],
        *,
        header_names: frozenset[str],
        uses_prompt_tokens: bool,
        memo_headers: bool = False,
    ) -> None:
        self._rules = tuple((node.test, matched) for node, matched in rules)
        self._nodes = tuple(rules)
        self._memo_headers = memo_headers
        #: Lowercase names of the headers the rules read (the core may keep them from the upstream).
        self.header_names = header_names
        #: Whether any rule reads ``prompt_tokens`` (when none does, the caller need not estimate before matching).
        self.uses_prompt_tokens = uses_prompt_tokens

    def __len__(self) -> int:
        return len(self._rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    @property
    def labels(self) -> tuple[str, ...]:
        """Each rule's label, in order."""
        return tuple(matched.label for _, matched in self._rules)

    @property
    def uses(self) -> tuple[R, ...]:
        """Each rule's ``use`` (as resolved), in order."""
        return tuple(matched.use for _, matched in self._rules)

    def match(self, headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> MatchedRule[R] | None:
        """The first rule whose condition holds for this request, or ``None``: the route's own targets take it.

        ``headers`` answers ``get(lowercase_name)`` (a lowercase-keyed ``dict`` is fastest); ``data`` is the parsed
        JSON body (plain dicts, as ``json.loads`` makes them); ``prompt_tokens`` is the estimated input size (any
        integer when :attr:`uses_prompt_tokens` is false).
        """
        if self._memo_headers and type(headers) is not dict:
            # Several conditions read the same header, and a case-insensitive lookup (httpx's scans every header,
            # and raises and catches KeyError for a missing one) costs ten times a dict's: read each name once.
            headers = _HeaderMemo(headers)
        for test, matched in self._rules:
            if test(headers, data, prompt_tokens):
                return matched
        return None

    def explain(self, headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> list[RuleVerdict[R]]:
        """Every rule, in order, judged against this request, with the reason in words: for a rule that did not
        match, the first condition that failed (``"header x-task is 'chat', not 'complex_reasoning'"``); for one
        that did, what held. Rules after the first match are judged too; the first with ``matched`` is the one
        :meth:`match` returns."""
        verdicts = []
        for node, matched in self._nodes:
            ok, reason = node.why(headers, data, prompt_tokens)
            verdicts.append(RuleVerdict(matched.index, matched.label, ok, reason, matched.use))
        return verdicts


class _HeaderMemo:
    """A header view that asks the one it wraps at most once per name."""

    __slots__ = ("_headers", "_seen")

    def __init__(self, headers: HeaderLookup) -> None:
        self._headers = headers
        self._seen: dict[str, str | None] = {}

    def get(self, key: str, /) -> str | None:
        seen = self._seen
        if key in seen:
            return seen[key]
        value = seen[key] = self._headers.get(key)
        return value


@overload
def compile_rules(
    rules: Sequence[Rule[Any] | Mapping[str, Any]],
    *,
    known_aliases: Collection[str],
    at: str = "rules",
) -> tuple[CompiledRules[Any], list[str]]: ...


@overload
def compile_rules(
    rules: Sequence[Rule[Any] | Mapping[str, Any]],
    *,
    known_aliases: Collection[str],
    at: str = "rules",
    resolve: Callable[[Any], R],
) -> tuple[CompiledRules[R], list[str]]: ...


def compile_rules(  # long by its doctest docstring; the body is one loop of ~35 lines
    rules: Sequence[Rule[Any] | Mapping[str, Any]],
    *,
    known_aliases: Collection[str],
    at: str = "rules",
    resolve: Callable[[Any], Any] | None = None,
) -> tuple[CompiledRules[Any], list[str]]:
    """Compile ``rules`` and list every problem in them, each with its key path under ``at``.

    An alias in ``use`` must be one of ``known_aliases`` (the route's own alias means its own targets: a rule that
    exempts requests from the rules after it). ``resolve`` turns each ``use`` (an alias string, or the inline
    target as validated) into what :meth:`CompiledRules.match` hands back, once, at load; a ``ValueError`` it raises
    is reported as a problem of that ``use``. Mappings are validated as :class:`Rule` (raising pydantic's
    ``ValidationError``); a configuration passes rules it has already validated. The compiled rules hold only the
    rules without problems.

    >>> compiled, problems = compile_rules(
    ...     [{"when": {"prompt_tokens": {"gt": 100000}}, "use": "lng"}], known_aliases=["long"], at="routes.a.rules")
    >>> problems
    ["routes.a.rules[0].use: unknown route 'lng' (did you mean 'long'?); known: long"]
    """
    known = ", ".join(sorted(known_aliases)) or "(none defined)"
    problems: list[str] = []
    compiled: list[tuple[_Node, MatchedRule[Any]]] = []
    names: dict[str, int] = {}
    reads = _Reads()
    for index, raw in enumerate(rules):
        rule = raw if isinstance(raw, Rule) else Rule[Any].model_validate(raw)
        where = f"{at}[{index}]"
        found: list[str] = []
        if rule.name is not None:
            if rule.name == DEFAULT_RULE:
                found.append(f"{where}.name: '{DEFAULT_RULE}' labels requests no rule matched; choose another name")
            elif rule.name in names:
                found.append(
                    f"{where}.name: '{rule.name}' already names {at}[{names[rule.name]}]; names label events and "
                    "reports, so make them unique"
                )
            else:
                names[rule.name] = index
        node = _compile_when(rule.when, f"{where}.when", found, reads, top=True)
        use: Any = rule.use
        if isinstance(use, str) and use not in known_aliases:
            hint = difflib.get_close_matches(use, list(known_aliases), n=1)
            maybe = f" (did you mean '{hint[0]}'?)" if hint else ""
            found.append(f"{where}.use: unknown route '{use}'{maybe}; known: {known}")
        elif resolve is not None:
            try:
                use = resolve(use)
            except ValueError as exc:
                found.append(f"{where}.use: {exc}")
        problems.extend(found)
        if not found:
            compiled.append((node, MatchedRule(index, rule.name or f"rules[{index}]", use)))
    return (
        CompiledRules(
            compiled,
            header_names=frozenset(reads.headers),
            uses_prompt_tokens=reads.prompt_tokens,
            memo_headers=any(count > 1 for count in reads.headers.values()),
        ),
        problems,
    )


# ---- compiling conditions ---------------------------------------------------------------------------------------


class _Reads:
    """What the compiled rules read from a request, gathered while compiling."""

    __slots__ = ("headers", "prompt_tokens")

    def __init__(self) -> None:
        self.headers: dict[str, int] = {}  # lowercase name -> how many conditions read it
        self.prompt_tokens = False


def _compile_when(when: object, path: str, problems: list[str], reads: _Reads, *, top: bool = False) -> _Node:
    """One condition mapping (every key must hold) as a node; problems are appended, and a never-matching node
    stands in for what did not compile."""
    if not isinstance(when, Mapping):
        problems.append(f"{path}: must be a mapping of conditions, such as {{header: {{x-task: summarise}}}}")
        return _NEVER
    if not when:
        extra = " (a rule that always matches is the route's own targets)" if top else ""
        problems.append(f"{path}: empty; give at least one condition, such as {{header: {{x-task: summarise}}}}{extra}")
        return _NEVER
    nodes: list[_Node] = []
    for key, spec in when.items():
        at = f"{path}.{key}"
        if key in ("header", "metadata", "param"):
            nodes.extend(_compile_fields(str(key), spec, at, problems, reads))
        elif key == "prompt_tokens":
            reads.prompt_tokens = True
            nodes.extend(_compile_spec(_TOKENS, spec, at, problems))
        elif key in ("all", "any"):
            if not isinstance(spec, list) or not spec:
                problems.append(f"{at}: must be a non-empty list of conditions, such as [{{header: {{x-a: b}}}}]")
                continue
            children = [_compile_when(item, f"{at}[{i}]", problems, reads) for i, item in enumerate(spec)]
            nodes.append(_all(children) if key == "all" else _any(children))
        elif key == "not":
            nodes.append(_not(_compile_when(spec, at, problems, reads)))
        else:
            hint = difflib.get_close_matches(str(key), _CONDITIONS, n=1)
            maybe = f" (did you mean '{hint[0]}'?)" if hint else ""
            problems.append(f"{at}: unknown condition '{key}'{maybe}; use one of {', '.join(_CONDITIONS)}")
    return _all(nodes)


def _compile_fields(kind: str, spec: object, path: str, problems: list[str], reads: _Reads) -> list[_Node]:
    if not isinstance(spec, Mapping) or not spec:
        example = {"header": "x-task: summarise", "metadata": "tier: free", "param": "reasoning_effort: high"}[kind]
        problems.append(f"{path}: must map names to values, such as {{{kind}: {{{example}}}}}")
        return []
    nodes: list[_Node] = []
    for raw_name, value in spec.items():
        name = str(raw_name)
        at = f"{path}.{name}"
        if kind == "header":
            if not _HEADER_NAME.match(name):
                problems.append(f"{at}: not a valid header name")
                continue
            lowered = name.lower()
            reads.headers[lowered] = reads.headers.get(lowered, 0) + 1
            source = _Source("header", lowered, f"header {lowered}")
        elif kind == "metadata":
            if not name:
                problems.append(f"{at}: empty key; name a key of the body's metadata object")
                continue
            source = _Source("metadata", name, f"metadata {name}")
        else:
            if not all(name.split(".")):
                problems.append(f"{at}: not a field path; write a top-level field (user) or a dotted path (a.b)")
                continue
            source = _Source("param" if "." not in name else "path", name, f"param {name}")
        nodes.extend(_compile_spec(source, value, at, problems))
    return nodes


def _compile_spec(source: _Source, spec: object, path: str, problems: list[str]) -> list[_Node]:
    """The nodes for a value spec: a plain value (equality) or a mapping of operators, all of which must hold."""
    allowed = _TOKEN_OPERATORS if source.kind == "tokens" else _OPERATORS
    if not isinstance(spec, Mapping):
        ops: Mapping[str, Any] = {"eq": spec}
        plain = True
    else:
        ops, plain = spec, False
    if not ops:
        problems.append(f"{path}: no operator; use one of {', '.join(allowed)}")
        return []
    nodes: list[_Node] = []
    for op, operand in ops.items():
        if op not in allowed:
            if op in _OPERATORS:
                problems.append(f"{path}: '{op}' does not apply to a token count; use one of {', '.join(allowed)}")
            else:
                hint = difflib.get_close_matches(str(op), allowed, n=1)
                maybe = f" (did you mean '{hint[0]}'?)" if hint else ""
                problems.append(f"{path}: unknown operator '{op}'{maybe}; use one of {', '.join(allowed)}")
            continue
        node = _compile_op(source, str(op), operand, path if plain else f"{path}.{op}", problems, plain=plain)
        if node is not None:
            nodes.append(node)
    return nodes


def _compile_op(source: _Source, op: str, operand: Any, at: str, problems: list[str], *, plain: bool) -> _Node | None:
    if op in ("eq", "in"):
        values = [operand] if op == "eq" else operand
        if op == "in" and (not isinstance(values, list) or not values):
            problems.append(f"{at}: must be a non-empty list of values, such as {{in: [free, trial]}}")
            return None
        if plain and isinstance(operand, list):
            problems.append(
                f"{at}: a list is ambiguous here; write {{in: [...]}} to match any of its values "
                "or {eq: [...]} to match the list itself"
            )
            return None
        for i, value in enumerate(values):
            where = at if op == "eq" else f"{at}[{i}]"
            if value is None:
                problems.append(f"{where}: null matches nothing; write {{exists: false}} to match a missing value")
                return None
            if source.kind == "tokens" and not _is_number(value):
                problems.append(f"{where}: must be a number of tokens, such as {{gt: 100000}}")
                return None
        return _equal_node(source, values, one=op == "eq")
    if op in _COMPARE_SIGNS:
        if not _is_number(operand):
            problems.append(f"{at}: must be a number, got {_show(operand)}")
            return None
        return _compare_node(source, op, operand)
    if op == "exists":
        if not isinstance(operand, bool):
            problems.append(f"{at}: must be true or false")
            return None
        return _exists_node(source, operand)
    # regex
    if not isinstance(operand, str):
        problems.append(f"{at}: must be a string (a Python regular expression)")
        return None
    try:
        pattern = re.compile(operand)
    except re.error as exc:
        problems.append(f"{at}: not a valid regular expression ({exc}); fix the pattern")
        return None
    return _regex_node(source, pattern)


# ---- sources: where a condition reads its value ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a condition reads its value: a header, a metadata key, a top-level field (``param``), a dotted field
    path (``path``) or the prompt size (``tokens``); ``subject`` names it in reasons."""

    kind: str
    key: str
    subject: str

    def getter(self) -> _Getter:
        """The value as a function of the request; ``None`` when it is missing (JSON null included)."""
        key = self.key
        if self.kind == "header":
            return lambda headers, data, prompt_tokens: headers.get(key)
        if self.kind == "param":
            return lambda headers, data, prompt_tokens: data.get(key)
        if self.kind == "tokens":
            return lambda headers, data, prompt_tokens: prompt_tokens
        if self.kind == "metadata":

            def get_metadata(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> Any:
                metadata = data.get("metadata")
                return metadata.get(key) if isinstance(metadata, dict) else None

            return get_metadata
        parts = tuple(key.split("."))

        def get_path(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> Any:
            value: Any = data
            for part in parts:
                if not isinstance(value, Mapping):  # the body is a Mapping (decoded when first read), the rest dicts
                    return None
                value = value.get(part)
            return value

        return get_path


_TOKENS: Final = _Source("tokens", "", "prompt_tokens")


# ---- leaves: one operator on one value ------------------------------------------------------------------------


def _leaf(source: _Source, pred: _Pred, yes: Callable[[Any], str], no: Callable[[Any], str]) -> _Node:
    """A node testing ``pred`` on the source's value. The test reads headers, top-level fields and the prompt size
    inline (one Python call fewer per evaluation than going through the getter)."""
    getter = source.getter()
    key = source.key
    test: _Test
    if source.kind == "header":

        def test(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> bool:
            return pred(headers.get(key))

    elif source.kind == "param":

        def test(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> bool:
            return pred(data.get(key))

    elif source.kind == "tokens":

        def test(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> bool:
            return pred(prompt_tokens)

    else:

        def test(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> bool:
            return pred(getter(headers, data, prompt_tokens))

    def why(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> tuple[bool, str]:
        value = getter(headers, data, prompt_tokens)
        if pred(value):
            return True, yes(value)
        return False, no(value)

    return _Node(test, why)


def _equal_node(source: _Source, values: list[Any], *, one: bool) -> _Node:
    # Strings in the request also equal the text form of configured numbers and booleans (headers are always text;
    # metadata values are strings on OpenAI). Booleans equal only booleans: JSON true is not the number 1.
    texts = frozenset(_text(v) for v in values if isinstance(v, str | int | float))
    numbers = frozenset(v for v in values if _is_number(v))
    bools = frozenset(v for v in values if isinstance(v, bool))
    others = tuple(v for v in values if not isinstance(v, str | int | float))
    subject = source.subject
    want = _show(values[0]) if one else f"one of {', '.join(_show(v) for v in values)}"

    def pred(value: Any) -> bool:
        if isinstance(value, str):
            return value in texts
        if isinstance(value, bool):
            return value in bools
        if isinstance(value, int | float):
            return value in numbers
        return value is not None and any(value == other for other in others)

    node = _leaf(source, pred, lambda v: f"{subject} is {_show(v)}", lambda v: f"{subject} is {_show(v)}, not {want}")
    if source.kind == "header" or all(isinstance(v, str) for v in values):
        fast = _equal_text(source, texts)
        if fast is not None:
            return _Node(fast, node.why)
    return node


def _equal_text(source: _Source, texts: frozenset[str]) -> _Test | None:
    """The most common conditions, a header, metadata key or top-level field equal to text, as one call each.
    Only text equals text, so anything else is refused before the set lookup (which cannot hash a list)."""
    key = source.key
    if source.kind == "header":
        # A header is text or absent.
        def header_test(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> bool:
            return headers.get(key) in texts

        return header_test
    if source.kind == "metadata":

        def metadata_test(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> bool:
            metadata = data.get("metadata")
            if not isinstance(metadata, dict):
                return False
            value = metadata.get(key)
            return type(value) is str and value in texts

        return metadata_test
    if source.kind == "param":

        def param_test(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> bool:
            value = data.get(key)
            return type(value) is str and value in texts

        return param_test
    return None


def _compare_node(source: _Source, op: str, bound: float) -> _Node:
    subject = source.subject
    want = f"{_COMPARE_SIGNS[op]} {_show(bound)}"
    compare: Callable[[Any, Any], bool] = _COMPARE_FUNCTIONS[op]  # C functions: no Python frame

    def pred(value: Any) -> bool:
        kind = type(value)
        if kind is int or kind is float:
            return compare(value, bound)
        if kind is str:
            try:
                return compare(float(value), bound)
            except ValueError:
                return False
        return False

    def no(value: Any) -> str:
        if value is not None and _as_number(value) is None:
            return f"{subject} is {_show(value)}, not a number"
        return f"{subject} is {_show(value)}, not {want}"

    node = _leaf(source, pred, lambda v: f"{subject} is {_show(v)} ({want})", no)
    if source.kind == "tokens":
        # prompt_tokens is always an int: compare it directly.
        fast: _Test = {
            "gt": lambda h, d, n: n > bound,
            "gte": lambda h, d, n: n >= bound,
            "lt": lambda h, d, n: n < bound,
            "lte": lambda h, d, n: n <= bound,
        }[op]
        return _Node(fast, node.why)
    return node


def _exists_node(source: _Source, wanted: bool) -> _Node:
    subject = source.subject

    def pred(value: Any) -> bool:
        return (value is not None) is wanted

    def describe(value: Any) -> str:
        return f"{subject} is missing" if value is None else f"{subject} is present ({_show(value)})"

    return _leaf(source, pred, describe, describe)


def _regex_node(source: _Source, pattern: re.Pattern[str]) -> _Node:
    search = pattern.search
    subject = source.subject

    def pred(value: Any) -> bool:
        if isinstance(value, str):
            return search(value) is not None
        if isinstance(value, int | float):  # bool included: its text form is true/false
            return search(_text(value)) is not None
        return False

    return _leaf(
        source,
        pred,
        lambda v: f"{subject} is {_show(v)} (matches {pattern.pattern!r})",
        lambda v: f"{subject} is {_show(v)}, not matching {pattern.pattern!r}",
    )


# ---- combinators ----------------------------------------------------------------------------------------------


def _never(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> bool:
    return False


_NEVER: Final = _Node(_never, lambda h, d, n: (False, "not compiled"))


def _all(nodes: Sequence[_Node]) -> _Node:
    leaves: list[_Node] = []
    for node in nodes:
        leaves.extend(node.leaves or (node,))
    if not leaves:
        return _NEVER  # only when every condition had a problem, and then the rule is not kept
    if len(leaves) == 1:
        return leaves[0]
    tests = tuple(node.test for node in leaves)

    def test(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> bool:
        for check in tests:  # noqa: SIM110 - a loop, not all(<generator>): this is the hot path
            if not check(headers, data, prompt_tokens):
                return False
        return True

    def why(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> tuple[bool, str]:
        reasons = []
        for node in leaves:
            ok, reason = node.why(headers, data, prompt_tokens)
            if not ok:
                return False, reason
            reasons.append(reason)
        return True, " and ".join(reasons)

    return _Node(test, why, tuple(leaves))


def _any(nodes: Sequence[_Node]) -> _Node:
    tests = tuple(node.test for node in nodes)

    def test(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> bool:
        for check in tests:  # noqa: SIM110 - a loop, not any(<generator>): this is the hot path
            if check(headers, data, prompt_tokens):
                return True
        return False

    def why(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> tuple[bool, str]:
        reasons = []
        for node in nodes:
            ok, reason = node.why(headers, data, prompt_tokens)
            if ok:
                return True, reason
            reasons.append(reason)
        return False, "none of any held: " + "; ".join(reasons)

    return _Node(test, why)


def _not(node: _Node) -> _Node:
    inner = node.test

    def test(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> bool:
        return not inner(headers, data, prompt_tokens)

    def why(headers: HeaderLookup, data: Mapping[str, Any], prompt_tokens: int) -> tuple[bool, str]:
        ok, reason = node.why(headers, data, prompt_tokens)
        return (False, f"{reason} (excluded by not)") if ok else (True, f"not: {reason}")

    return _Node(test, why)


# ---- values ---------------------------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _text(value: str | float) -> str:
    """How a configured scalar is written in a header: ``true``, ``1``, ``0.5``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else repr(value)


def _show(value: object) -> str:
    """A request or configured value in a reason, shortened: ``'chat'``, ``150,000``, ``true``, ``missing``."""
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1000 else f"{value:g}"
    if isinstance(value, str):
        shown = value if len(value) <= _SHOW_CHARS else value[: _SHOW_CHARS - 3] + "..."
        return repr(shown)
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
