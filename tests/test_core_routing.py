"""The core decides which requests are routed, to which arm, and how the outgoing request looks. No sockets."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import pytest

from holyroute.core.steps import Respond, Send
from holyroute.rollout.split import SplitPicker, stable_unit

from .conftest import Harness, base_config, drive, ok


class TestPassThrough:
    """Requests that are not model calls to a configured alias are not touched."""

    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("GET", "/v1/models", None),
            ("POST", "/v1/files", b"--boundary\r\n"),
            ("POST", "/v1/chat/completions", b"not json"),
            ("POST", "/v1/chat/completions", b'{"model": "gpt-4o", "messages": []}'),
            ("POST", "/v1/chat/completions", b"[1, 2]"),
            ("POST", "/v1/chat/completions", b'{"model": 42}'),
            ("POST", "/v1/audio/speech", b'{"model": "chat-default", "input": "hi"}'),
            ("POST", "/v1/chat/completionsX", b'{"model": "chat-default"}'),
        ],
    )
    def test_not_routed(self, harness: Harness, method: str, path: str, body: bytes | None) -> None:
        """Anything but a JSON body naming an alias on a routed operation passes through."""
        assert harness.router.begin(method, path, "", {}, body) is None

    @pytest.mark.parametrize(
        "path", ["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions", "/proxy/v1/responses"]
    )
    def test_routed_operations(self, harness: Harness, path: str) -> None:
        """Chat Completions, Responses, Embeddings and legacy Completions are routed, under any prefix."""
        assert harness.router.begin("POST", path, "", {}, b'{"model": "chat-default"}') is not None


class TestOutgoingRequest:
    """An attempt is addressed to the endpoint with its own key and the upstream model name."""

    def test_url_key_and_model(self, harness: Harness) -> None:
        """The path suffix and query are kept; the endpoint's base_url, key and model replace the caller's."""
        call = harness.router.begin(
            "POST", "/v1/chat/completions", "a=1", {}, b'{"model": "chat-default", "user": "u"}'
        )
        assert call is not None
        sent = drive(call, [ok()]).sent[0]
        assert sent.url in (
            "https://main.example/v1/chat/completions?a=1",
            "https://deep.example/v1/chat/completions?a=1",
        )
        body = json.loads(sent.body)
        assert body["model"] in ("gpt-4.1", "deepseek-chat")
        auth = dict(sent.headers)["authorization"]
        assert auth == {"main": "Bearer key-main", "deep": "Bearer key-deep"}[sent.endpoint]

    def test_endpoint_model_name_and_query(self, make_harness: Callable[..., Harness]) -> None:
        """`{endpoint, model}` renames the model for one endpoint (Azure); endpoint query and api-key auth apply."""
        config = base_config(
            endpoints={
                "azure": {
                    "base_url": "https://x.openai.azure.com/openai/v1",
                    "api_key": "az",
                    "auth": "api-key",
                    "query": {"api-version": "preview"},
                }
            },
            routes={
                "chat-default": {
                    "targets": [{"model": "gpt-4.1", "endpoints": [{"endpoint": "azure", "model": "my-deploy"}]}]
                }
            },
        )
        sent = drive(make_harness(config).call(), [ok()]).sent[0]
        assert sent.url == "https://x.openai.azure.com/openai/v1/chat/completions?api-version=preview"
        assert json.loads(sent.body)["model"] == "my-deploy"
        assert dict(sent.headers)["api-key"] == "az"
        assert "authorization" not in dict(sent.headers)

    def test_stream_usage_injected(self, harness: Harness) -> None:
        """A stream that did not ask for usage gets stream_options.include_usage on the wire; the tap hides it."""
        call = harness.call({"stream": True, "stream_options": {"include_obfuscation": False}})
        outcome = drive(call, [(200, {"content-type": "text/event-stream"}, b"")])
        body = json.loads(outcome.sent[0].body)
        assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
        assert outcome.final.hide_usage_chunk is True  # type: ignore[union-attr]

    def test_stream_usage_already_asked(self, harness: Harness) -> None:
        """When the caller asked for usage itself, nothing is injected or hidden."""
        call = harness.call({"stream": True, "stream_options": {"include_usage": True}})
        outcome = drive(call, [(200, {"content-type": "text/event-stream"}, b"")])
        assert outcome.final.hide_usage_chunk is False  # type: ignore[union-attr]

    def test_responses_stream_not_injected(self, harness: Harness) -> None:
        """The Responses API always reports usage in response.completed; its body is left as sent."""
        call = harness.call({"stream": True, "input": "hi"}, path="/v1/responses")
        sent = drive(call, [(200, {"content-type": "text/event-stream"}, b"")]).sent[0]
        assert "stream_options" not in json.loads(sent.body)

    def test_stream_usage_opt_out(self, make_harness: Callable[..., Harness]) -> None:
        """`stream_usage: false` on an endpoint that rejects stream_options leaves the body alone."""
        config = base_config()
        for endpoint in config["endpoints"].values():
            endpoint["stream_usage"] = False
        call = make_harness(config).call({"stream": True})
        sent = drive(call, [(200, {"content-type": "text/event-stream"}, b"")]).sent[0]
        assert "stream_options" not in json.loads(sent.body)

    def test_encoding_pinned(self, harness: Harness) -> None:
        """Streams are asked for uncompressed; JSON only in encodings the usage reader opens."""
        stream = drive(harness.call({"stream": True}), [ok()]).sent[0]
        plain = drive(harness.call(), [ok()]).sent[0]
        assert dict(stream.headers)["accept-encoding"] == "identity"
        assert dict(plain.headers)["accept-encoding"] == "gzip, deflate"


class TestWeightedSplit:
    """Arms are chosen in proportion to their weights."""

    def test_shares(self, harness: Harness) -> None:
        """90/10 weights give about 90/10 of 4000 calls (binomial 4-sigma band)."""
        arms = Counter(drive(harness.call(), [ok()]).sent[0].endpoint for _ in range(4000))
        assert 3500 <= arms["main"] <= 3700
        assert arms["main"] + arms["deep"] == 4000

    def test_zero_weight_never_chosen(self, make_harness: Callable[..., Harness]) -> None:
        """An arm with weight 0 gets no traffic."""
        config = base_config()
        config["routes"]["chat-default"]["targets"][1]["weight"] = 0
        h = make_harness(config)
        assert {drive(h.call(), [ok()]).sent[0].endpoint for _ in range(500)} == {"main"}


class TestSticky:
    """With a sticky key, the same user always gets the same arm, everywhere."""

    def _config(self, sticky: str, weights: tuple[float, float] = (90, 10)) -> dict[str, object]:
        config = base_config()
        route = config["routes"]["chat-default"]
        route["sticky"] = sticky
        route["targets"][0]["weight"], route["targets"][1]["weight"] = weights
        return config

    def test_same_user_same_arm(self, make_harness: Callable[..., Harness]) -> None:
        """Two routers with different random seeds agree for every user (a process restart changes nothing)."""
        first, second = make_harness(self._config("user"), seed=1), make_harness(self._config("user"), seed=2)
        for n in range(300):
            body = {"user": f"user-{n}"}
            assert drive(first.call(body), [ok()]).sent[0].endpoint == drive(second.call(body), [ok()]).sent[0].endpoint

    def test_share_follows_weights(self, make_harness: Callable[..., Harness]) -> None:
        """Across many users the sticky split still follows the weights."""
        h = make_harness(self._config("user"))
        arms = Counter(drive(h.call({"user": f"u{n}"}), [ok()]).sent[0].endpoint for n in range(4000))
        assert 3500 <= arms["main"] <= 3700

    def test_raising_weight_keeps_users(self, make_harness: Callable[..., Harness]) -> None:
        """Raising the candidate from 10% to 50% moves users onto it, never off it."""
        before = make_harness(self._config("user", (90, 10)))
        after = make_harness(self._config("user", (50, 50)))
        users = [f"user-{n}" for n in range(2000)]
        arm_before = {u: drive(before.call({"user": u}), [ok()]).sent[0].endpoint for u in users}
        arm_after = {u: drive(after.call({"user": u}), [ok()]).sent[0].endpoint for u in users}
        on_candidate = [u for u in users if arm_before[u] == "deep"]
        assert on_candidate, "some users start on the candidate"
        assert all(arm_after[u] == "deep" for u in on_candidate)
        assert sum(arm == "deep" for arm in arm_after.values()) > 2 * len(on_candidate)

    @pytest.mark.parametrize(
        ("sticky", "body", "headers"),
        [
            ("user", {"safety_identifier": "abc"}, {}),
            ("header:x-tenant", {}, {"x-tenant": "abc"}),
            ("body:metadata.tenant", {"metadata": {"tenant": "abc"}}, {}),
        ],
    )
    def test_key_sources(
        self, make_harness: Callable[..., Harness], sticky: str, body: dict[str, object], headers: dict[str, str]
    ) -> None:
        """The key comes from the user field (or safety_identifier), a header, or a body path; events say so."""
        h = make_harness(self._config(sticky, (50, 50)))
        picks = {drive(h.call(body, headers=headers), [ok()]).sent[0].endpoint for _ in range(30)}
        assert len(picks) == 1
        h.router.routes["chat-default"]  # the route is compiled
        call = h.call(body, headers=headers)
        drive(call, [ok()])
        call.on_complete(None)
        assert h.events.named("holyroute.request")[-1]["sticky"] is True

    def test_missing_key_is_random(self, make_harness: Callable[..., Harness]) -> None:
        """A request without the key is split at random."""
        h = make_harness(self._config("user", (50, 50)))
        assert len({drive(h.call(), [ok()]).sent[0].endpoint for _ in range(60)}) == 2


class TestPinnedArm:
    """`x-holyroute-arm` pins an arm for one request."""

    def test_pin_by_model(self, harness: Harness) -> None:
        assert {
            drive(harness.call(headers={"x-holyroute-arm": "deepseek-chat"}), [ok()]).sent[0].endpoint
            for _ in range(50)
        } == {"deep"}

    def test_unknown_pin_is_a_clear_400(self, harness: Harness) -> None:
        """A pin that names no arm is answered locally with a 400 listing the arms; nothing is sent."""
        outcome = drive(harness.call(headers={"x-holyroute-arm": "gpt-5"}), [])
        assert outcome.sent == []
        assert isinstance(outcome.final, Respond)
        assert outcome.final.status == 400
        message = json.loads(outcome.final.body)["error"]["message"]
        assert "matches no arm of route 'chat-default'; arms: gpt-4.1, deepseek-chat" in message


class TestSplitPicker:
    """The pure picker behind the split."""

    def test_stable_unit_is_stable_and_open(self) -> None:
        assert stable_unit("a", "b") == stable_unit("a", "b")
        assert 0 < stable_unit("x") < 1

    def test_rejects_bad_weights(self) -> None:
        with pytest.raises(ValueError, match="at least one positive"):
            SplitPicker("r", ["a"], [0])

    def test_single_arm(self) -> None:
        import random

        assert SplitPicker("r", ["a"], [3]).random(random.Random(1)) == 0


def test_send_repr_hides_key(harness: Harness) -> None:
    """A Send step's repr (as in a traceback) names the endpoint, never the key."""
    sent = drive(harness.call({"user": "x"}), [ok()]).sent[0]
    assert isinstance(sent, Send)
    assert "key-" not in repr(sent)
    assert "key-" not in repr(harness.router.routes)
