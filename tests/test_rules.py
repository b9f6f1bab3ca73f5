"""Request rules: each operator and combinator, rule order and the default, load-time problems, and explain."""

from __future__ import annotations

import doctest
from collections.abc import Mapping
from typing import Any

import httpx2
import pytest
from pydantic import BaseModel, ConfigDict

from holyroute.config import rules as _rules
from holyroute.config.rules import DEFAULT_RULE, CompiledRules, HeaderLookup, MatchedRule, Rule, compile_rules

ALIASES = ("assistant", "chat-cheap", "long-context", "reasoning")
AT = "routes.assistant.rules"


def compiled(*rules: Mapping[str, Any]) -> CompiledRules[Any]:
    result, problems = compile_rules(list(rules), known_aliases=ALIASES, at=AT)
    assert problems == []
    return result


def problems(*rules: Mapping[str, Any]) -> list[str]:
    return compile_rules(list(rules), known_aliases=ALIASES, at=AT)[1]


def holds(
    when: Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
    tokens: int = 0,
) -> bool:
    """Whether one rule with this ``when`` matches the request."""
    rules = compiled({"when": when, "use": "reasoning"})
    return rules.match(dict(headers or {}), data or {}, tokens) is not None


def reason(
    when: Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
    tokens: int = 0,
) -> tuple[bool, str]:
    """What explain says of one rule with this ``when``."""
    (verdict,) = compiled({"when": when, "use": "reasoning"}).explain(dict(headers or {}), data or {}, tokens)
    return verdict.matched, verdict.reason


class TestEquality:
    def test_a_plain_header_value_means_equality(self) -> None:
        """`header: {x-task: complex_reasoning}` matches that value and nothing else."""
        when = {"header": {"x-task": "complex_reasoning"}}
        assert holds(when, headers={"x-task": "complex_reasoning"})
        assert not holds(when, headers={"x-task": "chat"})
        assert not holds(when)

    def test_header_names_are_case_insensitive_and_values_exact(self) -> None:
        """Names match in any case, with httpx's headers as the core holds them; values compare exactly."""
        rules = compiled({"when": {"header": {"X-Task": "complex_reasoning"}}, "use": "reasoning"})
        assert rules.match(httpx2.Headers({"X-TASK": "complex_reasoning"}), {}, 0) is not None
        assert rules.match(httpx2.Headers({"x-task": "Complex_Reasoning"}), {}, 0) is None
        assert rules.header_names == frozenset({"x-task"})

    def test_a_header_several_rules_read_is_asked_for_once(self) -> None:
        """With httpx's headers, each name the rules read is looked up once per match, whichever rule decides."""
        asked: list[str] = []

        class CountingHeaders:
            def __init__(self, headers: httpx2.Headers) -> None:
                self.headers = headers

            def get(self, key: str, /) -> str | None:
                asked.append(key)
                value: str | None = self.headers.get(key)
                return value

        rules = compiled(
            {"when": {"header": {"x-task": "a"}}, "use": "reasoning"},
            {"when": {"header": {"x-task": {"in": ["b", "c"]}}, "prompt_tokens": {"gt": 5}}, "use": "chat-cheap"},
            {"when": {"header": {"X-Task": {"regex": "^d"}}}, "use": "long-context"},
        )
        headers = CountingHeaders(httpx2.Headers({"X-Task": "dx"}))
        assert rules.match(headers, {}, 10) == MatchedRule(2, "rules[2]", "long-context")
        assert asked == ["x-task"]

    def test_a_header_equals_a_configured_number_or_boolean_written_the_same_way(self) -> None:
        """Headers are text: YAML's `x-priority: 1` and `x-debug: true` match the headers `1` and `true`."""
        assert holds({"header": {"x-priority": 1}}, headers={"x-priority": "1"})
        assert holds({"header": {"x-debug": True}}, headers={"x-debug": "true"})
        assert not holds({"header": {"x-debug": True}}, headers={"x-debug": "True"})

    def test_metadata_reads_the_bodys_metadata_object(self) -> None:
        """`metadata: {tier: free}` reads `metadata.tier`; a missing or non-object metadata matches nothing."""
        when = {"metadata": {"tier": "free"}}
        assert holds(when, data={"metadata": {"tier": "free"}})
        assert not holds(when, data={"metadata": {"tier": "pro"}})
        assert not holds(when, data={"metadata": {}})
        assert not holds(when, data={})
        assert not holds(when, data={"metadata": "free"})

    def test_param_reads_any_top_level_field_and_dotted_paths(self) -> None:
        """`param` reads a body field; a dotted name walks into objects (the Responses API's `reasoning.effort`)."""
        assert holds({"param": {"reasoning_effort": "high"}}, data={"reasoning_effort": "high"})
        assert holds({"param": {"reasoning.effort": "high"}}, data={"reasoning": {"effort": "high"}})
        assert not holds({"param": {"reasoning.effort": "high"}}, data={"reasoning": "high"})
        assert holds({"param": {"temperature": 0}}, data={"temperature": 0.0})

    def test_booleans_equal_only_booleans(self) -> None:
        """JSON true is not the number 1, and 1 is not true."""
        assert holds({"param": {"stream": True}}, data={"stream": True})
        assert not holds({"param": {"stream": True}}, data={"stream": 1})
        assert not holds({"param": {"n": 1}}, data={"n": True})

    def test_lists_and_objects_in_the_request_never_equal_text_and_never_fail(self) -> None:
        """A list where text was expected simply does not match (it cannot be looked up in a set)."""
        assert not holds({"param": {"stop": "x"}}, data={"stop": ["x"]})
        assert not holds({"metadata": {"tier": {"in": ["free", 1]}}}, data={"metadata": {"tier": {"a": 1}}})
        assert holds({"metadata": {"tier": {"in": ["free", 1]}}}, data={"metadata": {"tier": "1"}})
        assert not holds({"param": {"user": "7"}}, data={"user": 7})

    def test_eq_matches_lists_and_objects_too(self) -> None:
        """`{eq: [...]}` compares the whole value."""
        assert holds({"param": {"modalities": {"eq": ["text", "audio"]}}}, data={"modalities": ["text", "audio"]})
        assert not holds({"param": {"modalities": {"eq": ["text"]}}}, data={"modalities": ["text", "audio"]})


class TestOperators:
    def test_in_matches_any_listed_value(self) -> None:
        """`{in: [free, trial]}` matches either value."""
        when = {"metadata": {"tier": {"in": ["free", "trial"]}}}
        assert holds(when, data={"metadata": {"tier": "trial"}})
        assert not holds(when, data={"metadata": {"tier": "pro"}})
        assert not holds(when, data={})

    @pytest.mark.parametrize(
        ("op", "below", "at", "above"),
        [
            ("gt", False, False, True),
            ("gte", False, True, True),
            ("lt", True, False, False),
            ("lte", True, True, False),
        ],
    )
    def test_comparisons_on_prompt_tokens(self, op: str, below: bool, at: bool, above: bool) -> None:
        """Each comparison holds on the right side of its bound."""
        when = {"prompt_tokens": {op: 100_000}}
        assert (holds(when, tokens=99_999), holds(when, tokens=100_000), holds(when, tokens=100_001)) == (
            below,
            at,
            above,
        )

    def test_several_operators_in_one_mapping_must_all_hold(self) -> None:
        """`{gte: 1000, lt: 50000}` is a range."""
        when = {"prompt_tokens": {"gte": 1000, "lt": 50_000}}
        assert [holds(when, tokens=n) for n in (999, 1000, 49_999, 50_000)] == [False, True, True, False]

    def test_comparisons_read_numeric_strings_and_skip_everything_else(self) -> None:
        """A header `x-priority: 7` is 7; non-numbers, booleans and missing values never compare."""
        when = {"header": {"x-priority": {"gt": 5}}}
        assert holds(when, headers={"x-priority": "7"})
        assert not holds(when, headers={"x-priority": "high"})
        assert not holds(when)
        assert holds({"param": {"temperature": {"lt": 0.5}}}, data={"temperature": 0.2})
        assert not holds({"param": {"n": {"gte": 1}}}, data={"n": True})

    def test_exists(self) -> None:
        """`exists: true` needs the value present and not null; `exists: false` needs it missing or null."""
        assert holds({"param": {"tools": {"exists": True}}}, data={"tools": []})
        assert not holds({"param": {"tools": {"exists": True}}}, data={"tools": None})
        assert holds({"param": {"tools": {"exists": False}}}, data={"tools": None})
        assert holds({"header": {"x-task": {"exists": False}}})
        assert not holds({"metadata": {"tier": {"exists": False}}}, data={"metadata": {"tier": "free"}})

    def test_regex_searches_and_anchors_only_when_asked(self) -> None:
        """`regex` is `re.search`: unanchored unless the pattern says `^...$`; numbers are matched as text."""
        assert holds({"param": {"user": {"regex": "team-"}}}, data={"user": "org/team-7"})
        assert not holds({"param": {"user": {"regex": "^team-"}}}, data={"user": "org/team-7"})
        assert holds({"param": {"seed": {"regex": "^4[0-9]$"}}}, data={"seed": 42})
        assert not holds({"param": {"user": {"regex": "team"}}}, data={"user": ["team"]})


class TestCombinators:
    def test_several_keys_in_one_when_mean_all_of_them(self) -> None:
        """A header and a size in one mapping must both hold."""
        when = {"header": {"x-task": "summarise"}, "prompt_tokens": {"gt": 1000}}
        assert holds(when, headers={"x-task": "summarise"}, tokens=5000)
        assert not holds(when, headers={"x-task": "summarise"}, tokens=10)
        assert not holds(when, tokens=5000)

    def test_all(self) -> None:
        """`all` holds when every condition does."""
        when = {"all": [{"metadata": {"tier": "free"}}, {"param": {"stream": True}}]}
        assert holds(when, data={"metadata": {"tier": "free"}, "stream": True})
        assert not holds(when, data={"metadata": {"tier": "free"}})

    def test_any(self) -> None:
        """`any` holds when one condition does."""
        when = {"any": [{"header": {"x-task": "long"}}, {"prompt_tokens": {"gt": 100_000}}]}
        assert holds(when, headers={"x-task": "long"})
        assert holds(when, tokens=150_000)
        assert not holds(when, tokens=10)

    def test_not(self) -> None:
        """`not` inverts its condition, a missing value included."""
        when = {"not": {"metadata": {"tier": "enterprise"}}}
        assert holds(when, data={"metadata": {"tier": "free"}})
        assert holds(when, data={})
        assert not holds(when, data={"metadata": {"tier": "enterprise"}})

    def test_combinators_nest(self) -> None:
        """Free-tier requests that are long or streamed, unless marked urgent."""
        when = {
            "all": [
                {"metadata": {"tier": "free"}},
                {"any": [{"prompt_tokens": {"gt": 8000}}, {"param": {"stream": True}}]},
                {"not": {"header": {"x-urgent": "1"}}},
            ]
        }
        free = {"metadata": {"tier": "free"}}
        assert holds(when, data=free, tokens=9000)
        assert holds(when, data={**free, "stream": True})
        assert not holds(when, data=free, tokens=100)
        assert not holds(when, data=free, tokens=9000, headers={"x-urgent": "1"})


class TestOrderAndDefault:
    RULES = (
        {"when": {"header": {"x-task": "complex_reasoning"}}, "use": "reasoning"},
        {"when": {"metadata": {"tier": "free"}}, "use": "chat-cheap", "name": "free-tier"},
        {"when": {"prompt_tokens": {"gt": 100_000}}, "use": "long-context"},
        {"when": {"param": {"reasoning_effort": "high"}}, "use": "reasoning"},
    )

    def test_the_first_matching_rule_wins(self) -> None:
        """A free-tier request with a long prompt matches rule 1 and rule 2; rule 1 decides."""
        rules = compiled(*self.RULES)
        matched = rules.match({}, {"metadata": {"tier": "free"}}, 150_000)
        assert matched == MatchedRule(1, "free-tier", "chat-cheap")

    def test_labels_are_names_or_positions(self) -> None:
        """A rule is labelled by its name, else by its position."""
        rules = compiled(*self.RULES)
        assert rules.labels == ("rules[0]", "free-tier", "rules[2]", "rules[3]")
        assert rules.match({}, {}, 150_000) == MatchedRule(2, "rules[2]", "long-context")

    def test_nothing_matched_means_the_default(self) -> None:
        """`None`: the route's own targets take the request."""
        rules = compiled(*self.RULES)
        assert rules.match({"x-task": "chat"}, {"metadata": {"tier": "pro"}}, 500) is None
        assert DEFAULT_RULE == "default"

    def test_no_rules(self) -> None:
        """An empty rule list is falsy and matches nothing."""
        rules = compiled()
        assert not rules
        assert len(rules) == 0
        assert rules.match({}, {}, 0) is None

    def test_what_the_rules_read(self) -> None:
        """The header names the rules read, and whether any reads the prompt size (else no estimate is needed)."""
        rules = compiled(*self.RULES)
        assert rules.header_names == frozenset({"x-task"})
        assert rules.uses_prompt_tokens
        assert not compiled(self.RULES[0]).uses_prompt_tokens

    def test_use_is_resolved_once_at_load(self) -> None:
        """`resolve` turns each `use` into what `match` hands back."""
        rules, found = compile_rules(list(self.RULES), known_aliases=ALIASES, resolve=lambda use: f"plan:{use}")
        assert found == []
        assert rules.match({"x-task": "complex_reasoning"}, {}, 0) == MatchedRule(0, "rules[0]", "plan:reasoning")

    def test_an_inline_target_is_validated_by_the_configurations_model(self) -> None:
        """`Rule[Target]` validates an inline `use`; the alias form stays a string."""

        class Target(BaseModel):
            model_config = ConfigDict(extra="forbid", frozen=True)
            model: str
            endpoints: list[str]

        inline = Rule[Target].model_validate(
            {"when": {"header": {"x-task": "vision"}}, "use": {"model": "gpt-4o", "endpoints": ["openai"]}}
        )
        alias = Rule[Target].model_validate({"when": {"header": {"x-task": "chat"}}, "use": "chat-cheap"})
        rules, found = compile_rules([inline, alias], known_aliases=ALIASES)
        assert found == []
        matched = rules.match({"x-task": "vision"}, {}, 0)
        assert matched is not None
        assert matched.use == Target(model="gpt-4o", endpoints=["openai"])
        assert rules.match({"x-task": "chat"}, {}, 0) == MatchedRule(1, "rules[1]", "chat-cheap")

    def test_a_rule_may_send_a_request_to_its_own_routes_targets(self) -> None:
        """`use: assistant` on route assistant exempts requests from the rules after it."""
        rules = compiled(
            {"when": {"header": {"x-tier": "premium"}}, "use": "assistant"},
            {"when": {"prompt_tokens": {"gt": 0}}, "use": "chat-cheap"},
        )
        assert rules.match({"x-tier": "premium"}, {}, 10) == MatchedRule(0, "rules[0]", "assistant")


class TestLoadTimeProblems:
    def test_unknown_operator(self) -> None:
        """The message names the key path, the operator, the closest one and the choices."""
        assert problems(
            {"when": {"header": {"x-task": "a"}}, "use": "reasoning"},
            {"when": {"prompt_tokens": {"gtt": 100_000}}, "use": "long-context"},
        ) == [
            "routes.assistant.rules[1].when.prompt_tokens: unknown operator 'gtt' (did you mean 'gt'?); "
            "use one of eq, in, gt, gte, lt, lte"
        ]
        assert problems({"when": {"header": {"x-task": {"matches": "a"}}}, "use": "reasoning"}) == [
            "routes.assistant.rules[0].when.header.x-task: unknown operator 'matches'; "
            "use one of eq, in, gt, gte, lt, lte, exists, regex"
        ]

    def test_operators_that_do_not_apply_to_a_token_count(self) -> None:
        """`exists` and `regex` make no sense on prompt_tokens."""
        assert problems({"when": {"prompt_tokens": {"regex": "^1"}}, "use": "reasoning"}) == [
            "routes.assistant.rules[0].when.prompt_tokens: 'regex' does not apply to a token count; "
            "use one of eq, in, gt, gte, lt, lte"
        ]
        assert problems({"when": {"prompt_tokens": "big"}, "use": "reasoning"}) == [
            "routes.assistant.rules[0].when.prompt_tokens: must be a number of tokens, such as {gt: 100000}"
        ]

    def test_unknown_condition(self) -> None:
        """A misspelt condition is named, with a suggestion."""
        assert problems({"when": {"headers": {"x-task": "a"}}, "use": "reasoning"}) == [
            "routes.assistant.rules[0].when.headers: unknown condition 'headers' (did you mean 'header'?); "
            "use one of header, metadata, param, prompt_tokens, all, any, not"
        ]

    def test_bad_operands(self) -> None:
        """Each operator's operand is checked, with the path down to the operator."""
        found = problems(
            {"when": {"param": {"temperature": {"gt": "hot"}}}, "use": "reasoning"},
            {"when": {"param": {"tools": {"exists": "yes"}}}, "use": "reasoning"},
            {"when": {"metadata": {"tier": {"in": []}}}, "use": "reasoning"},
            {"when": {"metadata": {"tier": {"in": ["free", None]}}}, "use": "reasoning"},
            {"when": {"param": {"user": {"regex": 7}}}, "use": "reasoning"},
            {"when": {"param": {"user": {}}}, "use": "reasoning"},
        )
        assert found == [
            "routes.assistant.rules[0].when.param.temperature.gt: must be a number, got 'hot'",
            "routes.assistant.rules[1].when.param.tools.exists: must be true or false",
            "routes.assistant.rules[2].when.metadata.tier.in: must be a non-empty list of values, "
            "such as {in: [free, trial]}",
            "routes.assistant.rules[3].when.metadata.tier.in[1]: null matches nothing; "
            "write {exists: false} to match a missing value",
            "routes.assistant.rules[4].when.param.user.regex: must be a string (a Python regular expression)",
            "routes.assistant.rules[5].when.param.user: no operator; "
            "use one of eq, in, gt, gte, lt, lte, exists, regex",
        ]

    def test_a_bad_regex_is_a_load_time_problem(self) -> None:
        """Patterns are compiled at load, and the compiler's complaint is quoted."""
        assert problems({"when": {"header": {"x-user": {"regex": "[team"}}}, "use": "reasoning"}) == [
            "routes.assistant.rules[0].when.header.x-user.regex: not a valid regular expression "
            "(unterminated character set at position 0); fix the pattern"
        ]

    def test_ambiguous_and_empty_values(self) -> None:
        """A plain list, a null, an empty mapping and an invalid header name are refused with the fix."""
        assert problems(
            {"when": {"header": {"x-task": ["a", "b"]}}, "use": "reasoning"},
            {"when": {"metadata": {"tier": None}}, "use": "reasoning"},
            {"when": {}, "use": "reasoning"},
            {"when": {"header": {}}, "use": "reasoning"},
            {"when": {"header": {"x task": "a"}}, "use": "reasoning"},
            {"when": {"param": {"a..b": 1}}, "use": "reasoning"},
        ) == [
            "routes.assistant.rules[0].when.header.x-task: a list is ambiguous here; write {in: [...]} to match any "
            "of its values or {eq: [...]} to match the list itself",
            "routes.assistant.rules[1].when.metadata.tier: null matches nothing; write {exists: false} to match a "
            "missing value",
            "routes.assistant.rules[2].when: empty; give at least one condition, such as "
            "{header: {x-task: summarise}} (a rule that always matches is the route's own targets)",
            "routes.assistant.rules[3].when.header: must map names to values, such as {header: {x-task: summarise}}",
            "routes.assistant.rules[4].when.header.x task: not a valid header name",
            "routes.assistant.rules[5].when.param.a..b: not a field path; write a top-level field (user) or a "
            "dotted path (a.b)",
        ]

    def test_combinator_shapes(self) -> None:
        """`all`/`any` take a non-empty list, `not` a mapping; problems inside them carry the full path."""
        assert problems(
            {"when": {"all": {"header": {"x-a": "b"}}}, "use": "reasoning"},
            {"when": {"any": []}, "use": "reasoning"},
            {"when": {"not": "x"}, "use": "reasoning"},
            {"when": {"any": [{"header": {"x-a": "b"}}, {"prompt_tokens": {"gtt": 1}}]}, "use": "reasoning"},
        ) == [
            "routes.assistant.rules[0].when.all: must be a non-empty list of conditions, such as [{header: {x-a: b}}]",
            "routes.assistant.rules[1].when.any: must be a non-empty list of conditions, such as [{header: {x-a: b}}]",
            "routes.assistant.rules[2].when.not: must be a mapping of conditions, "
            "such as {header: {x-task: summarise}}",
            "routes.assistant.rules[3].when.any[1].prompt_tokens: unknown operator 'gtt' (did you mean 'gt'?); "
            "use one of eq, in, gt, gte, lt, lte",
        ]

    def test_unknown_alias(self) -> None:
        """`use` names a route that exists, with the closest name suggested and the known ones listed."""
        assert problems({"when": {"header": {"x-task": "a"}}, "use": "reasonin"}) == [
            "routes.assistant.rules[0].use: unknown route 'reasonin' (did you mean 'reasoning'?); "
            "known: assistant, chat-cheap, long-context, reasoning"
        ]

    def test_names_are_unique_and_not_the_default_label(self) -> None:
        """Names label events and reports, so they must tell rules apart, and from the default."""
        assert problems(
            {"when": {"header": {"x-a": "1"}}, "use": "reasoning", "name": "hard"},
            {"when": {"header": {"x-a": "2"}}, "use": "reasoning", "name": "hard"},
            {"when": {"header": {"x-a": "3"}}, "use": "reasoning", "name": "default"},
        ) == [
            "routes.assistant.rules[1].name: 'hard' already names routes.assistant.rules[0]; names label events "
            "and reports, so make them unique",
            "routes.assistant.rules[2].name: 'default' labels requests no rule matched; choose another name",
        ]

    def test_a_resolve_error_is_a_problem_of_that_use(self) -> None:
        """A `ValueError` from `resolve` is reported at the rule's `use`."""

        def resolve(use: Any) -> str:
            raise ValueError("endpoint 'nope' is not defined; known: openai")

        _, found = compile_rules(
            [{"when": {"header": {"x-a": "1"}}, "use": {"model": "m", "endpoints": ["nope"]}}],
            known_aliases=ALIASES,
            at=AT,
            resolve=resolve,
        )
        assert found == ["routes.assistant.rules[0].use: endpoint 'nope' is not defined; known: openai"]

    def test_every_problem_is_reported_and_broken_rules_are_left_out(self) -> None:
        """All problems at once; the rules that compiled still work (the configuration refuses to load anyway)."""
        rules, found = compile_rules(
            [
                {"when": {"header": {"x-a": {"gtt": 1}}, "metadata": {"b": {"regex": "("}}}, "use": "nowhere"},
                {"when": {"header": {"x-a": "1"}}, "use": "reasoning"},
            ],
            known_aliases=ALIASES,
            at=AT,
        )
        assert len(found) == 3
        assert rules.labels == ("rules[1]",)

    def test_a_mapping_rule_with_a_bad_shape_raises_pydantics_error(self) -> None:
        """Mappings are validated as `Rule` (a configuration passes rules it validated with key paths)."""
        with pytest.raises(ValueError, match="when"):
            compile_rules([{"use": "reasoning"}], known_aliases=ALIASES)


class TestExplain:
    def test_why_a_rule_did_not_match_names_the_first_failing_condition(self) -> None:
        """One sentence per rule, in order; the matching rule says what held."""
        rules = compiled(*TestOrderAndDefault.RULES)
        verdicts = rules.explain({"x-task": "chat"}, {"metadata": {"tier": "pro"}, "reasoning_effort": "high"}, 5000)
        assert [(v.label, v.matched, v.reason) for v in verdicts] == [
            ("rules[0]", False, "header x-task is 'chat', not 'complex_reasoning'"),
            ("free-tier", False, "metadata tier is 'pro', not 'free'"),
            ("rules[2]", False, "prompt_tokens is 5,000, not > 100,000"),
            ("rules[3]", True, "param reasoning_effort is 'high'"),
        ]
        assert [v.use for v in verdicts] == ["reasoning", "chat-cheap", "long-context", "reasoning"]

    def test_missing_values(self) -> None:
        """A missing header, metadata key or field says so."""
        assert reason({"header": {"x-task": "a"}}) == (False, "header x-task is missing, not 'a'")
        assert reason({"metadata": {"tier": {"in": ["free", "trial"]}}}) == (
            False,
            "metadata tier is missing, not one of 'free', 'trial'",
        )
        assert reason({"header": {"x-task": {"exists": True}}}) == (False, "header x-task is missing")
        assert reason({"param": {"tools": {"exists": False}}}, data={"tools": [1, 2]}) == (
            False,
            "param tools is present (a list of 2)",
        )

    def test_operators_in_words(self) -> None:
        """Comparisons, regexes and non-numbers read as sentences; long values are shortened."""
        assert reason({"prompt_tokens": {"gte": 1000, "lt": 50_000}}, tokens=60_000) == (
            False,
            "prompt_tokens is 60,000, not < 50,000",
        )
        assert reason({"prompt_tokens": {"gte": 1000, "lt": 50_000}}, tokens=2000) == (
            True,
            "prompt_tokens is 2,000 (>= 1,000) and prompt_tokens is 2,000 (< 50,000)",
        )
        assert reason({"header": {"x-priority": {"gt": 5}}}, headers={"x-priority": "high"}) == (
            False,
            "header x-priority is 'high', not a number",
        )
        assert reason({"param": {"user": {"regex": "^team-"}}}, data={"user": "x" * 60}) == (
            False,
            f"param user is '{'x' * 37}...', not matching '^team-'",
        )

    def test_combinators_in_words(self) -> None:
        """`all` stops at its first failure, `any` lists every failure, `not` says what it excluded."""
        when_any = {"any": [{"header": {"x-task": "long"}}, {"prompt_tokens": {"gt": 100_000}}]}
        assert reason(when_any, tokens=10) == (
            False,
            "none of any held: header x-task is missing, not 'long'; prompt_tokens is 10, not > 100,000",
        )
        assert reason(when_any, tokens=200_000) == (True, "prompt_tokens is 200,000 (> 100,000)")
        when_not = {"not": {"metadata": {"tier": "enterprise"}}}
        assert reason(when_not, data={"metadata": {"tier": "enterprise"}}) == (
            False,
            "metadata tier is 'enterprise' (excluded by not)",
        )
        assert reason(when_not, data={"metadata": {"tier": "free"}}) == (
            True,
            "not: metadata tier is 'free', not 'enterprise'",
        )

    def test_explain_agrees_with_match(self) -> None:
        """The first rule explain marks as matched is the one match picks, for a spread of requests."""
        rules = compiled(*TestOrderAndDefault.RULES)
        requests: list[tuple[HeaderLookup, dict[str, Any], int]] = [
            ({}, {}, 0),
            ({"x-task": "complex_reasoning"}, {}, 0),
            ({}, {"metadata": {"tier": "free"}}, 200_000),
            ({}, {"reasoning_effort": "high"}, 200_000),
            ({}, {"reasoning_effort": "low"}, 20),
        ]
        for headers, data, tokens in requests:
            first = next((v for v in rules.explain(headers, data, tokens) if v.matched), None)
            matched = rules.match(headers, data, tokens)
            assert (first.index if first else None) == (matched.index if matched else None)


def test_doctests() -> None:
    """The examples in the module's docstrings run."""
    failures, tried = doctest.testmod(_rules)
    assert (failures, tried > 0) == (0, True)
