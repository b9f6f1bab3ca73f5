"""Shadow traffic: a sampled copy of each call goes to the shadow target in the background, never in the way."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

import holyroute
from holyroute.testing import FakeUpstream, Reply

from .conftest import Events


@pytest.fixture
def ups() -> Iterator[dict[str, FakeUpstream]]:
    made = {name: FakeUpstream(name).start() for name in ("served", "shadow")}
    yield made
    for up in made.values():
        up.stop()


def config(ups: dict[str, FakeUpstream], **shadow: Any) -> dict[str, Any]:
    return {
        "endpoints": {name: {"base_url": up.base_url} for name, up in ups.items()},
        "routes": {
            "chat": {
                "targets": [{"model": "gpt-4o", "endpoints": ["served"]}],
                "shadow": {"model": "gpt-4.1", "endpoints": ["shadow"], "sample": 1.0, **shadow},
            }
        },
    }


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert predicate(), "timed out waiting for the shadow call"


def requests(events: Events, *, shadow: bool) -> list[dict[str, Any]]:
    return [e for e in events.named("holyroute.request") if e["shadow"] is shadow]


def test_caller_does_not_wait_for_a_slow_shadow(ups: dict[str, FakeUpstream]) -> None:
    """The shadow's upstream holds its answer until after the caller has had its own."""
    hold = threading.Event()
    ups["shadow"].push(Reply(gate=hold, gate_after=0, gate_timeout_s=5))
    events = Events()
    transport = holyroute.Transport(config(ups), log=False, sinks=[events])
    with openai.OpenAI(api_key="x", http_client=httpx2.Client(transport=transport)) as sdk:
        answer = sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert answer.model == "gpt-4o"
        assert ups["shadow"].gate_log == [], "the caller got its answer while the shadow was still held"
        hold.set()
        wait_for(lambda: requests(events, shadow=True))
    (shadow,) = requests(events, shadow=True)
    (served,) = requests(events, shadow=False)
    assert (shadow["arm"], shadow["upstream_model"], shadow["outcome"]) == ("gpt-4.1", "gpt-4.1", "ok")
    assert shadow["cost_usd"] > 0
    assert served["arm"] == "gpt-4o"
    assert ups["shadow"].requests[0].model == "gpt-4.1"


def test_failing_shadow_is_invisible(ups: dict[str, FakeUpstream]) -> None:
    ups["shadow"].push(Reply.error(500), Reply(drop=True))
    events = Events()
    transport = holyroute.Transport(config(ups), log=False, sinks=[events])
    with openai.OpenAI(api_key="x", http_client=httpx2.Client(transport=transport)) as sdk:
        for _ in range(2):
            sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        wait_for(lambda: len(requests(events, shadow=True)) == 2)
    assert [e["outcome"] for e in requests(events, shadow=True)] == ["error", "error"]
    assert [e["outcome"] for e in requests(events, shadow=False)] == ["ok", "ok"]
    assert len(ups["shadow"].requests) == 2, "a shadow gets one attempt, no failover or retries"


def test_async_caller_does_not_wait(ups: dict[str, FakeUpstream]) -> None:
    hold = threading.Event()
    ups["shadow"].push(Reply(gate=hold, gate_after=0, gate_timeout_s=5))
    events = Events()

    async def main() -> None:
        transport = holyroute.AsyncTransport(config(ups), log=False, sinks=[events])
        async with openai.AsyncOpenAI(api_key="x", http_client=httpx2.AsyncClient(transport=transport)) as sdk:
            answer = await sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
            assert answer.model == "gpt-4o"
            assert ups["shadow"].gate_log == []
            hold.set()
            for _ in range(500):
                if requests(events, shadow=True):
                    break
                await asyncio.sleep(0.01)

    asyncio.run(main())
    assert requests(events, shadow=True)[0]["outcome"] == "ok"


def test_daily_cost_cap(ups: dict[str, FakeUpstream]) -> None:
    """Mirroring stops for the day once the shadow spend reaches the cap, and starts again the next day."""
    now = [1_700_000_000.0]
    events = Events()
    router = holyroute.Router(
        holyroute.load_config(config(ups, max_cost_usd_per_day=0.0001)),
        wall_clock=lambda: now[0],
        log=False,
        sinks=[events],
    )
    transport = holyroute.Transport(router=router)
    with openai.OpenAI(api_key="x", http_client=httpx2.Client(transport=transport)) as sdk:

        def call() -> None:
            sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello there"}])
            wait_for(lambda: transport._shadows_pending == 0)  # its shadow (if any) has finished and been costed

        for _ in range(5):
            call()
        costs = [e["cost_usd"] for e in requests(events, shadow=True)]
        assert len(costs) == 2, "the first shadow leaves room under the cap, the second reaches it"
        assert costs[0] < 0.0001 <= sum(costs)
        now[0] += 86400
        call()
    assert len(requests(events, shadow=True)) == 3, "a new day, a new budget"


def test_sample_share(ups: dict[str, FakeUpstream]) -> None:
    events = Events()
    transport = holyroute.Transport(config(ups, sample=0.1), log=False, sinks=[events])
    with openai.OpenAI(api_key="x", http_client=httpx2.Client(transport=transport)) as sdk:
        for _ in range(300):
            sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        wait_for(lambda: len(ups["shadow"].requests) == len(requests(events, shadow=True)))
    assert 10 <= len(ups["shadow"].requests) <= 55


def test_shadow_events_feed_the_report(ups: dict[str, FakeUpstream], tmp_path: Any) -> None:
    """Shadow and served answers carry finish_reason and the quality verdict; the report compares them."""
    import json

    from holyroute.readers.aggregate import aggregate_log
    from holyroute.readers.log import load_log
    from holyroute.readers.report import build_report, render_report

    ups["shadow"].push(
        Reply(
            body={
                "id": "x",
                "object": "chat.completion",
                "model": "gpt-4.1",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 0},
            }
        )
    )
    events = Events()

    def quality(route: str, arm: str, body: bytes) -> bool:
        return bool(json.loads(body)["choices"][0]["message"]["content"])

    transport = holyroute.Transport(config(ups), log=False, sinks=[events], quality=quality)
    with openai.OpenAI(api_key="x", http_client=httpx2.Client(transport=transport)) as sdk:
        for _ in range(3):
            sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        wait_for(lambda: transport._shadows_pending == 0 and len(requests(events, shadow=True)) == 3)
    shadows = requests(events, shadow=True)
    assert sorted(e["finish_reason"] for e in shadows) == ["length", "stop", "stop"]
    assert sorted(e["quality"] for e in shadows) == [False, True, True]
    assert {e["finish_reason"] for e in requests(events, shadow=False)} == {"stop"}
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(json.dumps({"event": name, **fields}) for name, fields in events.items))
    text = render_report(build_report(aggregate_log(load_log(log))))
    assert "shadow vs served:" in text
    assert "length 1, stop 2" in text
    assert "1/3" in text


class TestADroppedShadowStillEnds:
    """A copy the driver drops before it runs (too many in flight) is a call that began: it ends with its one event,
    cancelled (never counted as an error of the shadow arm), and the caller's call is untouched."""

    def test_sync(self, ups: dict[str, FakeUpstream], monkeypatch: pytest.MonkeyPatch) -> None:
        from holyroute.drivers import transport as driver

        monkeypatch.setattr(driver, "_MAX_SHADOWS_PENDING", 0)
        events = Events()
        transport = holyroute.Transport(config(ups), log=False, sinks=[events])
        with openai.OpenAI(api_key="x", http_client=httpx2.Client(transport=transport)) as sdk:
            sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        (shadow,) = requests(events, shadow=True)
        assert (shadow["outcome"], shadow["error"], shadow["attempts"]) == ("cancelled", "cancelled: ShadowDropped", 0)
        assert [e["outcome"] for e in requests(events, shadow=False)] == ["ok"]
        assert ups["shadow"].requests == []

    def test_async(self, ups: dict[str, FakeUpstream], monkeypatch: pytest.MonkeyPatch) -> None:
        from holyroute.drivers import transport as driver

        monkeypatch.setattr(driver, "_MAX_SHADOWS_PENDING", 0)
        events = Events()

        async def main() -> None:
            transport = holyroute.AsyncTransport(config(ups), log=False, sinks=[events])
            async with openai.AsyncOpenAI(api_key="x", http_client=httpx2.AsyncClient(transport=transport)) as sdk:
                await sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])

        asyncio.run(main())
        (shadow,) = requests(events, shadow=True)
        assert (shadow["outcome"], shadow["error"]) == ("cancelled", "cancelled: ShadowDropped")
        assert [e["outcome"] for e in requests(events, shadow=False)] == ["ok"]
        assert ups["shadow"].requests == []


def test_the_shadow_of_a_stream_streams(ups: dict[str, FakeUpstream]) -> None:
    """A shadow copy takes its call's stream flag (read once, at the boundary): it streams when the call does."""
    router = holyroute.Router(holyroute.load_config(config(ups)))
    try:
        for streams in (True, False):
            body = b'{"model": "chat", "stream": %s, "messages": []}' % (b"true" if streams else b"false")
            call = router.begin("POST", "/v1/chat/completions", "", {}, body)
            assert call is not None
            assert call.shadow is not None
            assert (call.stream, call.shadow.stream) == (streams, streams)
            call.shadow.abandon(asyncio.CancelledError())
            call.abandon(asyncio.CancelledError())
    finally:
        router.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_call_lends_its_header_names_to_its_own_attempts_only(
    ups: dict[str, FakeUpstream], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The driver hands the view of the request's headers to its own call's attempts, which copy the headers with
    the names the view listed; a shadow copy, which sends later, gets none and lists them itself."""
    from holyroute.drivers import transport as driver
    from holyroute.drivers.compat import HeaderView

    seen: list[tuple[str, bool]] = []  # (endpoint host, names lent)
    lock = threading.Lock()
    real = driver.attempt_request

    def spy(request: httpx2.Request, url: str, **kwargs: Any) -> httpx2.Request:
        view = kwargs.get("listed_by")
        lent = isinstance(view, HeaderView) and view.names_for(request.headers._list) is not None
        with lock:
            seen.append((url, lent))
        return real(request, url, **kwargs)

    monkeypatch.setattr(driver, "attempt_request", spy)
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": "Bearer caller-key", "X-Trace": "t1"}
    if mode == "sync":
        with httpx2.Client(transport=holyroute.Transport(config(ups))) as client:
            assert client.post("http://caller.invalid/v1/chat/completions", json=body, headers=headers).is_success
            # Until the shadow's upstream has its request: the attempt is built (seen) before it is sent.
            wait_for(lambda: len(seen) == 2 and len(ups["shadow"].requests) == 1)
    else:

        async def run() -> None:
            async with httpx2.AsyncClient(transport=holyroute.AsyncTransport(config(ups))) as client:
                sent = await client.post("http://caller.invalid/v1/chat/completions", json=body, headers=headers)
                assert sent.is_success
                for _ in range(500):
                    if len(seen) == 2 and len(ups["shadow"].requests) == 1:
                        break
                    await asyncio.sleep(0.01)

        asyncio.run(run())
    assert sorted(seen) == sorted([(f"{ups['served'].base_url}/chat/completions", True),
                                   (f"{ups['shadow'].base_url}/chat/completions", False)])  # fmt: skip
    assert ups["served"].requests[0].headers.get("x-trace") == ups["shadow"].requests[0].headers.get("x-trace") == "t1"
