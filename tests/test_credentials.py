"""Credentials stay home: configured secrets are checked at load and masked when printed, the caller's credentials
never reach a routed endpoint, redirects are never followed, and cost ceilings bound a call wherever its rules send it.
"""

from __future__ import annotations

import asyncio
import json
import string
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import h11
import httpx2
import openai
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

import holyroute
from holyroute.config.schema import Endpoint, load_config, unsendable
from holyroute.core.steps import Respond, Send
from holyroute.drivers.compat import attempt_request
from holyroute.exceptions import ConfigError
from holyroute.testing import FakeUpstream, Reply

from .conftest import Harness, base_config, drive, ok, status

CALLER_SECRET = "caller-SECRET-0f9e"
BODY = {"model": "chat-default", "messages": [{"role": "user", "content": "hi"}]}


def with_endpoint(**fields: Any) -> dict[str, Any]:
    config = base_config()
    config["endpoints"]["main"] = {"base_url": "https://main.example/v1", **fields}
    return config


def problems_of(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    return str(caught.value)


def h11_accepts(headers: list[tuple[bytes, bytes]]) -> None:
    """Raise unless h11 (what httpx2 sends HTTP/1.1 with) would put these headers on the wire."""
    host = [] if any(name.lower() == b"host" for name, _ in headers) else [(b"host", b"x")]
    h11.Request(method="POST", target="/v1/chat/completions", headers=[*host, *headers])


def sent_headers(config: Any, endpoint: str = "main") -> list[tuple[bytes, bytes]]:
    """The headers an attempt to ``endpoint`` carries, built as the transport builds them."""
    loaded = load_config(config)
    add = (*loaded.endpoints[endpoint].request_headers(), ("accept-encoding", "identity"))
    request = httpx2.Request("POST", "http://caller.example/v1/chat/completions", content=b"{}")
    built = attempt_request(
        request, "http://up.example/v1/chat/completions", drop=frozenset({"host"}), add=add, body=b"{}", extensions={}
    )
    return list(built.headers.raw)


# ---- configured values: checked at load, never echoed ------------------------------------------------------------


class TestUnsendableValues:
    """A value that cannot be sent in a header is rejected at load with its key path, never quoting it."""

    def test_zero_width_space_in_api_key(self) -> None:
        message = problems_of(with_endpoint(api_key="sk-12345678\u200b90"))
        assert "endpoints.main.api_key: contains a zero-width character (U+200B) at position 11; re-copy the value" in (
            message
        )
        assert "sk-12345678" not in message

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ("sk-abc\n", "contains a control character (U+000A, a line feed) at position 6"),
            ("sk-abc\r\nx", "contains a control character (U+000D, a carriage return) at position 6"),
            ("sk-\x00abc", "contains a control character (U+0000, NUL) at position 3"),
            ("sk-\tabc", "contains a control character (U+0009, a tab) at position 3"),
            ("sk-\x7fabc", "contains a control character (U+007F) at position 3"),
            ("\ufeffsk-abc", "contains a zero-width character (U+FEFF) at position 0"),
            ("sk-\u2060abc", "contains a zero-width character (U+2060) at position 3"),
            ("sk-\u200eabc", "contains an invisible format character (U+200E) at position 3"),
            ("sk-\xadabc", "contains an invisible format character (U+00AD) at position 3"),
            ("sk-\xa0abc", "contains a non-breaking space (U+00A0) at position 3"),
            ("sk-\u2014abc", "contains a character outside Latin-1 (U+2014) at position 3"),
            (" sk-abc", "starts with a space"),
            ("sk-abc ", "ends with a space"),
        ],
    )
    @pytest.mark.parametrize("where", ["api_key", "headers.x-tenant", "query.api-version"])
    def test_rejected_with_the_key_path(self, value: str, reason: str, where: str) -> None:
        fields: dict[str, Any] = {"api_key": "sk-fine"}
        if where == "api_key":
            fields["api_key"] = value
        else:
            kind, name = where.split(".")
            fields[kind] = {name: value}
        message = problems_of(with_endpoint(**fields))
        assert f"endpoints.main.{where}: {reason}" in message
        assert "sk-abc" not in message

    def test_header_name_keeps_its_case_in_the_path(self) -> None:
        message = problems_of(with_endpoint(headers={"X-Tenant": "t\u200b"}))
        assert "endpoints.main.headers.X-Tenant: contains a zero-width character (U+200B) at position 1" in message

    def test_organization_and_project_are_header_values_too(self) -> None:
        message = problems_of(with_endpoint(organization="org\n", project="\u200bproj"))
        assert "endpoints.main.organization: contains a control character (U+000A, a line feed)" in message
        assert "endpoints.main.project: contains a zero-width character (U+200B) at position 0" in message

    def test_empty_api_key(self) -> None:
        message = problems_of(with_endpoint(api_key=""))
        assert "endpoints.main.api_key: is empty; set the key, or remove api_key (and use auth: none)" in message

    @pytest.mark.parametrize(
        ("name", "reason"),
        [
            ("x tenant", "is not an HTTP header name"),
            ("x-t\u200b", "is not an HTTP header name"),
            ("Host", "'Host' is set by holyroute for each attempt; remove it"),
            ("content-length", "is set by holyroute for each attempt"),
        ],
    )
    def test_bad_header_names(self, name: str, reason: str) -> None:
        message = problems_of(with_endpoint(headers={name: "v-SECRET"}))
        assert reason in message
        assert "v-SECRET" not in message

    def test_latin1_text_is_sent_as_latin1(self) -> None:
        headers = sent_headers(with_endpoint(api_key="sk-\xe9t\xe9", headers={"x-note": "caf\xe9"}))
        assert (b"authorization", b"Bearer sk-\xe9t\xe9") in headers
        assert (b"x-note", b"caf\xe9") in headers
        h11_accepts(headers)

    def test_a_model_built_directly_does_not_quote_the_key_either(self) -> None:
        with pytest.raises(ValidationError) as caught:
            Endpoint(base_url="https://x.example/v1", api_key="sk-direct-SECRET\u200b")
        assert "sk-direct-SECRET" not in str(caught.value)


class TestMasked:
    """Configured header and query values are secrets: masked in repr, str and JSON dumps."""

    def test_repr_str_and_json(self) -> None:
        config = load_config(
            with_endpoint(
                api_key="sk-key-SECRET", headers={"x-extra": "hdr-SECRET"}, query={"api-version": "query-SECRET"}
            )
        )
        for text in (repr(config), str(config), config.model_dump_json(), str(config.model_dump())):
            for secret in ("sk-key-SECRET", "hdr-SECRET", "query-SECRET"):
                assert secret not in text
        assert "headers={'x-extra': SecretStr('**********')}" in repr(config.endpoints["main"])
        # ... yet they are what the endpoint is sent.
        endpoint = config.endpoints["main"]
        assert ("x-extra", "hdr-SECRET") in endpoint.request_headers()
        assert endpoint.query_string() == "api-version=query-SECRET"

    def test_userinfo_of_a_base_url(self) -> None:
        config = load_config(with_endpoint(base_url="https://user:pw-SECRET@main.example:8443/v1", api_key="k"))
        assert "pw-SECRET" not in repr(config)
        assert "pw-SECRET" not in str(config)
        assert "base_url='https://***@main.example:8443/v1'" in repr(config.endpoints["main"])
        assert config.endpoints["main"].base_url == "https://user:pw-SECRET@main.example:8443/v1"

    def test_userinfo_is_masked_in_dumps_too(self) -> None:
        """The userinfo is masked up to the last '@' (a password may hold one), in every print and dump."""
        for url in ("https://user:pw-SECRET@main.example/v1", "https://user:pw@SECRET@main.example/v1"):
            config = load_config(with_endpoint(base_url=url, api_key="k"))
            for text in (repr(config), str(config), config.model_dump_json(), str(config.model_dump())):
                assert "SECRET" not in text
                assert "***@main.example/v1" in text


class TestBaseUrl:
    """A base_url is parsed at load as each attempt's URL will be: one that cannot be is rejected, never echoed."""

    @pytest.mark.parametrize(
        "url",
        [
            "http://user:Sup3r/Secret@a.example/v1",  # the password's '/' ends the host: "Invalid port 'Sup3r'"
            "http://user:123/Secret@a.example/v1",  # ... or makes host 'user', port 123, the rest a path
            "http://[::1/v1",
            "http://:80/v1",
            "http://user:Sup3rSecret@/v1",
            "http://a.example:99999/v1",
            "http://a.exa mple/v1",
        ],
    )
    def test_rejected_at_load_without_the_value(self, url: str) -> None:
        message = problems_of(with_endpoint(base_url=url, api_key="k"))
        assert "endpoints.main.base_url:" in message
        for part in ("Sup3r", "Secret", "123", "::1", "99999", "exa mple"):
            assert part not in message

    def test_a_percent_encoded_password_is_sent_to_the_host(self) -> None:
        url = "http://user:Sup3r%2FSecret@a.example/v1"
        config = load_config(with_endpoint(base_url=url, api_key="k"))
        assert "Sup3r" not in repr(config)
        target = httpx2.URL(f"{config.endpoints['main'].base_url}/chat/completions")
        assert (target.host, target.raw_path) == ("a.example", b"/v1/chat/completions")

    def test_an_attempt_is_printed_without_userinfo_or_query(self) -> None:
        """A Send step (in a traceback, a debugger, a test's failure message) shows neither the password nor the
        configured query values."""
        config = load_config(
            with_endpoint(base_url="https://user:pw-SECRET@main.example/v1", api_key="k", query={"key": "q-SECRET"})
        )
        router = holyroute.Router(config, log=False, sinks=[])
        call = router.begin(
            "POST", "/v1/chat/completions", "", {"x-holyroute-arm": "gpt-4.1"}, json.dumps(BODY).encode()
        )
        assert call is not None
        step = call.next_step()
        assert isinstance(step, Send)
        assert "SECRET" in step.url
        assert repr(step) == "Send(url='https://***@main.example/v1/chat/completions', endpoint='main')"

    def test_the_call_is_not_made_to_raise(self) -> None:
        """The reported symptom: the config loaded and then every call raised InvalidURL, quoting the password."""
        config = with_endpoint(base_url="http://user:Sup3r/Secret@a.example/v1", api_key="k")
        with pytest.raises(ConfigError) as caught:
            holyroute.Transport(config, transport=httpx2.MockTransport(lambda request: httpx2.Response(200)))
        assert "Sup3r" not in str(caught.value)


# ---- property tests: any string loads (and can be sent) or is rejected without being quoted ---------------------

SENTINEL = st.text(alphabet=string.ascii_letters + string.digits, min_size=16, max_size=16).map(lambda s: "Zq" + s)


class TestValuesProperty:
    @given(prefix=st.text(max_size=12), secret=SENTINEL, suffix=st.text(max_size=12), where=st.sampled_from(
        ["api_key", "header", "query"]
    ))  # fmt: skip
    def test_loads_and_sends_or_is_rejected_without_the_value(
        self, prefix: str, secret: str, suffix: str, where: str
    ) -> None:
        value = prefix + secret + suffix
        fields: dict[str, Any] = {"api_key": value} if where == "api_key" else {"api_key": "sk-fine"}
        if where == "header":
            fields["headers"] = {"x-value": value}
        elif where == "query":
            fields["query"] = {"v": value}
        config = with_endpoint(**fields)
        try:
            loaded = load_config(config)
        except ConfigError as error:
            message = str(error)
            assert secret not in message
            assert message.isascii()
            assert unsendable(value) is not None
            return
        assert unsendable(value) is None
        h11_accepts(sent_headers(config))  # header values go on the wire as they are
        query = loaded.endpoints["main"].query_string()
        assert httpx2.URL(f"http://up.example/v1/chat/completions?{query}").query.decode("ascii") == query
        for text in (repr(loaded), str(loaded), loaded.model_dump_json()):
            assert secret not in text

    @given(
        scheme=st.sampled_from(["http://", "https://", "HTTP://", "ftp://", ""]),
        user=st.text(max_size=6),
        secret=SENTINEL,
        junk=st.text(alphabet="/?#@:[]% ", max_size=3),
        host=st.sampled_from(["a.example", "a.example:8443", "[::1]", "127.0.0.1:1", "", "xn--", "\u00e9x.com"]),
        path=st.text(max_size=12),
    )
    @example(scheme="http://", user="user", secret="Sup3r/Secret", junk="", host="a.example", path="/v1")
    @example(scheme="http://", user="user", secret="Zq", junk="/x", host="a.example", path="/v1")
    def test_base_url_loads_and_is_sendable_or_is_rejected_without_the_secret(
        self, *, scheme: str, user: str, secret: str, junk: str, host: str, path: str
    ) -> None:
        """Any base_url either loads, and then every attempt's URL is valid and goes to the host it shows, or is
        rejected with a message that quotes no part of the password."""
        url = f"{scheme}{user}:{secret}{junk}@{host}{path}"
        try:
            loaded = load_config(with_endpoint(base_url=url, api_key="k", query={"api-version": "1"}))
        except ConfigError as error:
            message = str(error)
            assert "endpoints.main.base_url:" in message
            assert secret[:4] not in message
            return
        endpoint = loaded.endpoints["main"]
        target = httpx2.URL(f"{endpoint.base_url}/chat/completions?{endpoint.query_string()}")
        assert target.scheme in ("http", "https")
        assert target.host
        assert secret.encode() not in target.raw_path
        h11_accepts([(b"host", target.netloc)])
        shown = loaded.model_dump()["endpoints"]["main"]["base_url"]
        assert secret[:4] not in shown
        assert secret[:4] not in repr(loaded)
        assert httpx2.URL(shown.replace("***@", "")).host == target.host  # the host shown is the host called

    @given(url=st.text(max_size=40) | st.text(max_size=30).map(lambda rest: "https://" + rest))
    def test_any_base_url_loads_and_builds_a_request_or_is_rejected_by_key_path(self, url: str) -> None:
        try:
            loaded = load_config(with_endpoint(base_url=url, api_key="k"))
        except ConfigError as error:
            message = str(error)
            assert "endpoints.main.base_url:" in message
            return
        request = httpx2.Request("POST", f"{loaded.endpoints['main'].base_url}/chat/completions?api-version=1")
        assert request.url.host
        h11_accepts([(b"host", request.url.netloc)])

    @given(value=st.text(max_size=40))
    def test_unsendable_is_total_and_agrees_with_h11(self, value: str) -> None:
        problem = unsendable(value)
        if problem is None:
            h11_accepts([(b"x-value", value.encode("latin-1"))])
        else:
            assert problem.isascii()
            assert "position" in problem or "space" in problem


QUERY_NAMES = st.sampled_from(["key", "KEY", "api-key", "Api_Key", "access_token", "api-version", "keep", "a b", "é"])


class TestQueryProperty:
    @given(
        caller=st.lists(st.tuples(QUERY_NAMES | st.text(max_size=6), st.text(max_size=8)), max_size=8),
        own=st.dictionaries(st.sampled_from(["api-version", "key", "deployment"]), st.text(max_size=8), max_size=3),
    )
    def test_merge_drops_credentials_and_lets_the_endpoint_win(
        self, caller: list[tuple[str, str]], own: dict[str, str]
    ) -> None:
        from urllib.parse import parse_qsl, urlencode

        from holyroute.core.plan import DROPPED_QUERY
        from holyroute.core.sending import _merge_query

        raw = urlencode(caller)
        merged = parse_qsl(_merge_query(raw, urlencode(own)) if raw else urlencode(own), keep_blank_values=True)
        replaced = DROPPED_QUERY | {name.lower() for name in own}
        expected = [(n, v) for n, v in parse_qsl(raw, keep_blank_values=True) if n.lower() not in replaced]
        assert merged == [*expected, *own.items()]


# ---- the caller's credentials stay with the caller -------------------------------------------------------------

CALLER_HEADERS = {
    "x-api-key": CALLER_SECRET,
    "X-Goog-Api-Key": CALLER_SECRET,
    "Cookie": f"session={CALLER_SECRET}",
    "Proxy-Authorization": f"Basic {CALLER_SECRET}",
    "api-key": CALLER_SECRET,
    "x-tenant": "theirs",
    "x-keep": "1",
}
CALLER_QUERY = {"key": CALLER_SECRET, "API_KEY": CALLER_SECRET, "access_token": CALLER_SECRET, "Api-Key": "x"}


def leak_config(main: str, backup: str, **main_fields: Any) -> dict[str, Any]:
    return {
        "endpoints": {
            "main": {
                "base_url": main,
                "api_key": "key-main",
                "headers": {"x-tenant": "ours"},
                "query": {"api-version": "2025-04-01"},
                **main_fields,
            },
            "backup": {"base_url": backup, "api_key": "key-backup"},
        },
        "routes": {
            "chat-default": {"targets": [{"model": "gpt-4o", "endpoints": ["main"]}], "fallbacks": ["chat-backup"]},
            "chat-backup": {"targets": [{"model": "gpt-4o-mini", "endpoints": ["backup"]}]},
        },
        "retry": {"max_attempts": 3, "backoff_initial_s": 0, "backoff_jitter_s": 0},
        "state": {"backend": "memory"},
    }


@pytest.fixture
def ups() -> Iterator[dict[str, FakeUpstream]]:
    with FakeUpstream("main") as main, FakeUpstream("backup") as backup, FakeUpstream("elsewhere") as elsewhere:
        yield {"main": main, "backup": backup, "elsewhere": elsewhere}


def run_sdk(mode: str, http_client: Any, call: Callable[[Any], Any], **options: Any) -> Any:
    options.setdefault("api_key", f"sdk-{CALLER_SECRET}")
    if mode == "sync":
        with openai.OpenAI(http_client=http_client, **options) as client:
            return call(client)

    async def run() -> Any:
        async with openai.AsyncOpenAI(http_client=http_client, **options) as client:
            return await call(client)

    return asyncio.run(run())


def chat(client: Any) -> Any:
    return client.chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("mode", ["sync", "async"])
class TestCallerCredentials:
    """The caller's own credentials never reach a routed endpoint or its fallback; the endpoint's values win."""

    def test_dropped_everywhere(self, mode: str, ups: dict[str, FakeUpstream]) -> None:
        ups["main"].push(Reply(status=500))
        config = leak_config(ups["main"].base_url, ups["backup"].base_url)
        make = holyroute.client if mode == "sync" else holyroute.async_client
        answer = run_sdk(
            mode, make(config), chat, default_headers=CALLER_HEADERS, default_query={**CALLER_QUERY, "keep": "1"}
        )
        assert answer.model.startswith("gpt-4o-mini")  # served by the fallback, after main's 500
        (to_main,) = ups["main"].requests
        (to_backup,) = ups["backup"].requests
        for seen in (to_main, to_backup):
            assert CALLER_SECRET not in json.dumps(seen.headers)
            assert CALLER_SECRET not in seen.query
            for name in ("x-api-key", "x-goog-api-key", "cookie", "proxy-authorization"):
                assert name not in seen.headers
            assert seen.headers["x-keep"] == "1"  # other caller headers still go through
        assert to_main.headers["authorization"] == "Bearer key-main"
        assert to_backup.headers["authorization"] == "Bearer key-backup"
        assert to_main.headers["x-tenant"] == "ours"  # the endpoint's header replaces the caller's, never joins it
        assert to_backup.headers["x-tenant"] == "theirs"
        assert to_main.query == "keep=1&api-version=2025-04-01"
        assert to_backup.query == "keep=1"

    def test_forward_headers_reach_that_endpoint_only(self, mode: str, ups: dict[str, FakeUpstream]) -> None:
        ups["main"].push(Reply(status=500))
        config = leak_config(ups["main"].base_url, ups["backup"].base_url, forward_headers=["X-Api-Key", "x-task"])
        config["routes"]["chat-default"]["rules"] = [{"when": {"header": {"x-task": "never"}}, "use": "chat-backup"}]
        make = holyroute.client if mode == "sync" else holyroute.async_client
        headers = {"x-api-key": CALLER_SECRET, "x-task": "summary"}
        run_sdk(mode, make(config), chat, default_headers=headers)
        (to_main,) = ups["main"].requests
        (to_backup,) = ups["backup"].requests
        assert to_main.headers["x-api-key"] == CALLER_SECRET
        assert to_main.headers["x-task"] == "summary"  # a header rules read, forwarded on purpose
        assert "x-api-key" not in to_backup.headers
        assert "x-task" not in to_backup.headers


class TestQueryAndForwarding:
    def test_endpoint_query_replaces_the_callers(self, make_harness: Callable[..., Harness]) -> None:
        config = base_config()
        config["endpoints"]["main"]["query"] = {"api-version": "2025-04-01"}
        h = make_harness(config)
        call = h.router.begin(
            "POST",
            "/v1/chat/completions",
            "api-version=2024-01-01&Key=abc&stream=%20x&API-VERSION=old&access_token=t&api_key=k",
            {},
            json.dumps(BODY).encode(),
        )
        assert call is not None
        step = call.next_step()
        assert isinstance(step, Send)
        assert step.url.endswith("/chat/completions?stream=%20x&api-version=2025-04-01")

    @pytest.mark.parametrize("fast", [True, False])
    def test_the_endpoints_header_replaces_the_callers(self, fast: bool) -> None:
        request = httpx2.Request(
            "POST", "http://caller.example/v1/chat/completions", headers={"X-Tenant": "theirs", "x-keep": "1"}
        )
        add = (("x-tenant", "ours"), ("authorization", "Bearer key-main"))
        sent = attempt_request(
            request, "http://up.example/v1/x", drop=frozenset({"host"}), add=add, body=b"{}", extensions={}, fast=fast
        )
        assert sent.headers.get_list("x-tenant") == ["ours"]
        assert sent.headers["x-keep"] == "1"
        assert sent.headers["host"] == "up.example"

    def test_credentials_dropped_for_a_shadow_too(self, make_harness: Callable[..., Harness]) -> None:
        config = base_config()
        config["routes"]["chat-default"]["shadow"] = {"model": "m", "endpoints": ["cheap"], "sample": 1.0}
        h = make_harness(config)
        call = h.router.begin("POST", "/v1/chat/completions", f"key={CALLER_SECRET}", {}, json.dumps(BODY).encode())
        assert call is not None
        assert call.shadow is not None
        step = call.shadow.next_step()
        assert isinstance(step, Send)
        request = httpx2.Request(
            "POST", f"http://caller.example/v1/chat/completions?key={CALLER_SECRET}", headers=CALLER_HEADERS
        )
        sent = attempt_request(request, step.url, drop=step.drop, add=step.headers, body=step.body, extensions={})
        assert CALLER_SECRET not in repr(sent.headers.raw)
        assert CALLER_SECRET not in str(sent.url)
        assert sent.headers["authorization"] == "Bearer key-cheap"

    @pytest.mark.parametrize(
        ("forward", "reason"),
        [
            (["x-holyroute-arm"], "'x-holyroute-arm' is holyroute's own header"),
            (["host"], "'host' is set by holyroute for each attempt"),
            (["x y"], "is not an HTTP header name"),
            (["Authorization"], "forward_headers[0]: 'authorization' is set by this endpoint itself"),
            (["x-tenant"], "forward_headers[0]: 'x-tenant' is set by this endpoint itself"),
        ],
    )
    def test_forward_headers_refused(self, forward: list[str], reason: str) -> None:
        message = problems_of(with_endpoint(api_key="k", headers={"X-Tenant": "t"}, forward_headers=forward))
        assert reason in message

    def test_forwarding_the_authorization_of_a_keyless_endpoint(self) -> None:
        loaded = load_config(with_endpoint(auth="none", forward_headers=["Authorization"]))
        assert loaded.endpoints["main"].forward_headers == ["authorization"]


# ---- redirects: a failure of the endpoint, never followed --------------------------------------------------------


class TestRedirectsCore:
    def test_a_3xx_fails_over_and_counts_against_health(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(base_config(health={"consecutive_failures": 1}))
        outcome = drive(h.call(), [status(302, {"location": "https://elsewhere.example/v1"}), ok()])
        assert outcome.endpoints == ["main", "backup"]
        (failover,) = h.events.named("holyroute.failover")
        assert failover["status"] == 302
        assert failover["reason"] == "302 redirect from upstream (not followed)"
        (ejected,) = h.events.named("holyroute.endpoint_ejected")
        assert ejected["endpoint"] == "main"

    def test_only_redirects_answer_502_without_location(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(base_config(retry={"max_attempts": 3, "backoff_jitter_s": 0}))
        moved = status(307, {"location": "https://elsewhere.example/v1", "x-request-id": "req-1"})
        outcome = drive(h.call(), [moved, moved, moved], h.clock)
        final = outcome.final
        assert isinstance(final, Respond)
        assert final.status == 502
        headers = dict(final.headers)
        assert "location" not in headers
        assert headers["x-should-retry"] == "false"
        assert headers["x-request-id"] == "req-1"
        error = json.loads(final.body)["error"]
        assert error["code"] == "holyroute_redirect"
        assert "answered 307 (a redirect); routed requests never follow redirects" in error["message"]
        (request,) = h.events.named("holyroute.request")
        assert (request["status"], request["outcome"]) == (502, "error")


class _Redirector(BaseHTTPRequestHandler):
    location = ""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(307)
        self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def redirector(ups: dict[str, FakeUpstream]) -> Iterator[str]:
    """A local endpoint that answers every POST with 307 to the ``elsewhere`` upstream."""
    handler = type("Handler", (_Redirector,), {"location": f"{ups['elsewhere'].base_url}/chat/completions"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def redirect_client(mode: str, config: dict[str, Any]) -> Any:
    """An httpx2 client that follows redirects, with holyroute's transport (waits made instant)."""
    if mode == "sync":
        return httpx2.Client(transport=holyroute.Transport(config, sleep=lambda _: None), follow_redirects=True)

    async def no_wait(_: float) -> None:
        return None

    return httpx2.AsyncClient(transport=holyroute.AsyncTransport(config, sleep=no_wait), follow_redirects=True)


@pytest.mark.parametrize("mode", ["sync", "async"])
class TestRedirectsEndToEnd:
    """With the official SDK and ``follow_redirects=True``, the Location host receives nothing."""

    def test_fails_over_to_the_backup(self, mode: str, ups: dict[str, FakeUpstream], redirector: str) -> None:
        config = leak_config(redirector, ups["backup"].base_url)
        answer = run_sdk(mode, redirect_client(mode, config), chat)
        assert answer.model.startswith("gpt-4o-mini")
        assert len(ups["backup"].requests) == 1
        assert ups["elsewhere"].requests == []

    def test_every_attempt_redirected(self, mode: str, ups: dict[str, FakeUpstream], redirector: str) -> None:
        config = leak_config(redirector, redirector)
        with pytest.raises(openai.InternalServerError) as caught:
            run_sdk(mode, redirect_client(mode, config), chat)
        assert caught.value.status_code == 502
        assert "location" not in caught.value.response.headers
        assert "routed requests never follow redirects" in caught.value.message
        assert ups["elsewhere"].requests == []


# ---- cost ceilings hold whatever alias the rules choose ----------------------------------------------------------


def ceiling_config(named: float | None, chosen: float | None) -> dict[str, Any]:
    config = base_config()
    config["prices"] = {"gpt-4.1": {"input": 2, "output": 8}, "o3": {"input": 200, "output": 800}}
    config["routes"]["chat-default"]["rules"] = [{"when": {"header": {"x-task": "hard"}}, "use": "reasoning"}]
    config["routes"]["reasoning"] = {"targets": [{"model": "o3", "endpoints": ["deep"]}]}
    if named is not None:
        config["routes"]["chat-default"]["max_cost_usd"] = named
    if chosen is not None:
        config["routes"]["reasoning"]["max_cost_usd"] = chosen
    return config


class TestCeilingsAcrossRules:
    # 1000 output tokens at o3's $800/M: up to $0.8+; at gpt-4.1's $8/M: about $0.008.
    ASK: ClassVar[dict[str, int]] = {"max_tokens": 1000}

    def test_the_named_routes_ceiling_binds_the_rules_choice(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(ceiling_config(named=0.05, chosen=None))
        outcome = drive(h.call(self.ASK, headers={"x-task": "hard"}), [])
        final = outcome.final
        assert isinstance(final, Respond)
        assert final.status == 400
        error = json.loads(final.body)["error"]
        assert error["code"] == "holyroute_cost_ceiling"
        assert "over the $0.05 ceiling" in error["message"]

    def test_the_chosen_routes_ceiling_binds_too(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(ceiling_config(named=None, chosen=0.05))
        final = drive(h.call(self.ASK, headers={"x-task": "hard"}), []).final
        assert isinstance(final, Respond)
        assert "over the $0.05 ceiling" in json.loads(final.body)["error"]["message"]

    def test_the_tightest_of_header_named_and_chosen(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(ceiling_config(named=5.0, chosen=2.0))
        call = h.call(self.ASK, headers={"x-task": "hard", "x-holyroute-max-cost": "0.5"})
        final = drive(call, []).final
        assert isinstance(final, Respond)
        assert "over the $0.5 ceiling" in json.loads(final.body)["error"]["message"]
        loose = h.call(self.ASK, headers={"x-task": "hard", "x-holyroute-max-cost": "3"})
        assert drive(loose, [ok()]).endpoints == ["deep"]  # $0.8 fits under the chosen route's $2

    def test_without_a_rule_the_named_route_still_binds(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(ceiling_config(named=0.05, chosen=None))
        assert drive(h.call(self.ASK), [ok()]).endpoints == ["main"]  # gpt-4.1 at about $0.008

    def test_explain_names_the_source(self) -> None:
        from holyroute.cli.explain import explain

        body = {**BODY, **self.ASK}
        text = explain(load_config(ceiling_config(named=1.0, chosen=0.05)), body, {"x-task": "hard"})
        first = text.splitlines()[0]
        assert first.endswith("cost ceiling $0.05 from route reasoning (chosen by a rule) (also route chat-default $1)")
        assert "over the $0.05 ceiling" in text
