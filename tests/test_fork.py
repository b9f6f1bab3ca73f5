"""A client built before a fork (gunicorn ``--preload``, ``multiprocessing`` with the fork start method) works in the
child as it did in the parent, whatever the parent's threads were doing at the fork.

A forked child has one thread, the one that forked. Whatever the parent's other threads held (a lock), had under way
(an attempt in flight, a half-open trial) or were (the health checker, the shadow pool) is copied into the child
without them: left alone, a lock is never released, an attempt never ends, a thread never runs. Each test puts the
parent in one such state, forks, and judges what the child does; each child must report within 10 s (a hang is
what some of these reproduce) and is killed otherwise. The Redis backend's own fork handling is tested in
``test_state_redis.py`` (``TestFork``).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import pytest

import holyroute
from holyroute.core.call import Router
from holyroute.forking import new_lock, new_rlock

from .conftest import forked, held_by_another_thread

pytestmark = [
    pytest.mark.skipif(not hasattr(multiprocessing, "get_context"), reason="no multiprocessing"),
    # Python 3.12+ warns that forking a threaded process may deadlock: that is the scenario under test.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

USAGE = b'"usage":{"prompt_tokens":1,"completion_tokens":1}'
ANSWER = b'{"id":"x","object":"chat.completion","model":"m","choices":[],' + USAGE + b"}"
BODY = b'{"model":"chat","messages":[{"role":"user","content":"hi"}]}'


class Upstreams:
    """An in-memory inner transport answering 200 for every endpoint; it notes which host each request went to, and
    which of them were health-check probes (the paths differ: a probe asks for ``/models``)."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.probes: list[str] = []
        self.transport = httpx2.MockTransport(self._answer)

    def _answer(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/chat/completions"):
            self.hosts.append(request.url.host)
            return httpx2.Response(200, headers={"content-type": "application/json"}, content=ANSWER)
        self.probes.append(request.url.host)
        return httpx2.Response(200, headers={"content-type": "application/json"}, content=b'{"data":[]}')


def config(*endpoints: str, **route: Any) -> dict[str, Any]:
    """One route, ``chat``, over ``endpoints`` (hosts a.test, b.test, ...) in that order."""
    return {
        "endpoints": {name: {"base_url": f"http://{name}.test/v1", "api_key": f"key-{name}"} for name in endpoints},
        "routes": {"chat": {"targets": [{"model": "m", "endpoints": list(endpoints)}], **route}},
    }


def chat(client: httpx2.Client) -> int:
    return client.post("http://sdk.test/v1/chat/completions", content=BODY).status_code


def in_a_forked_child(target: Callable[[Any], None]) -> dict[str, Any]:
    """Fork, run ``target(pipe)`` in the child and return what it sent (:func:`tests.conftest.forked`, within 10 s)."""
    return forked(target)[0]


def locks_of(router: Router) -> dict[str, Any]:
    """The router's locks, by the part that owns them; the child in the test below takes each."""
    health = router.health
    return {
        "ejections": health.ejections._lock,
        "cooldowns": health.cooldowns._lock,
        "rate limits": health.rate_limits._lock,
        "health book": health._lock,
        "retry budget": router.budgets["chat"]._lock,
        "sinks": router._sinks_lock,
    }


@pytest.mark.parametrize("part", list(locks_of(Router(holyroute.load_config(config("a")), log=False))))
def test_a_lock_held_by_another_thread_at_the_fork_does_not_hang_the_child(part: str) -> None:
    """Before: the child waited forever for a lock whose holder was not copied into it, at its first call for the
    locks every call takes (ejections, retry budget, rate limits: ``a`` has an rpm), or at the first use of the
    part that owns it (a cooldown, a health-check verdict, a sink added)."""
    upstreams = Upstreams()
    cfg = config("a")
    cfg["endpoints"]["a"]["rpm"] = 10_000
    client = holyroute.client(cfg, transport=upstreams.transport, log=False)
    assert chat(client) == 200

    def child(pipe: Any) -> None:
        statuses = [chat(client) for _ in range(3)]
        router = holyroute.router_of(client)
        router.health.cooldowns.cool("a", "m", 0.01, "429 no retry header", router.clock())
        router.health.record_probe("a", "healthy", router.clock())
        router.add_sink(lambda event, fields: None)
        pipe.send({"statuses": statuses})

    with held_by_another_thread(locks_of(holyroute.router_of(client))[part]):
        report = in_a_forked_child(child)
    assert report == {"statuses": [200, 200, 200]}
    client.close()


def test_a_trial_in_flight_in_the_parent_does_not_keep_the_endpoint_out_of_the_child() -> None:
    """An endpoint whose ejection ended lets one trial through; the parent's trial was in flight at the fork. Before:
    the child saw that trial in flight forever, so the endpoint never came back into its rotation."""
    upstreams = Upstreams()
    client = holyroute.client(config("a", "b"), transport=upstreams.transport, log=False)
    router = holyroute.router_of(client)
    ejections = router.health.ejections
    now = router.clock()
    for _ in range(ejections.policy.consecutive_failures):
        ejections.failure("a", "500", now, ("a", "b"))
    assert ejections.ejected("a", now) is not None
    state = ejections._endpoints["a"]
    state.ejected_until = now  # the ejection is over: the next attempt on a is its half-open trial
    assert ejections.begin("a", now) is True  # the parent's trial, in flight at the fork (never ended here)

    def child(pipe: Any) -> None:
        statuses = [chat(client) for _ in range(4)]
        pipe.send({"statuses": statuses, "hosts": upstreams.hosts, "in_flight": ejections.in_flight("a")})

    report = in_a_forked_child(child)
    # The child's first call on a is its own trial; it succeeds and restores a, which the ordered arm prefers.
    assert report == {"statuses": [200] * 4, "hosts": ["a.test"] * 4, "in_flight": 0}
    client.close()


def test_the_parents_attempts_in_flight_are_not_counted_in_the_child() -> None:
    upstreams = Upstreams()
    client = holyroute.client(config("a"), transport=upstreams.transport, log=False)
    router = holyroute.router_of(client)
    router.health.ejections.begin("a", router.clock())  # an attempt of another thread, in flight at the fork
    router.health.ejections.begin("a", router.clock())

    def child(pipe: Any) -> None:
        pipe.send({"before": router.health.ejections.in_flight("a"), "status": chat(client)})

    assert in_a_forked_child(child) == {"before": 0, "status": 200}
    assert router.health.ejections.in_flight("a") == 2  # the parent's own are still its own
    client.close()


def test_active_health_checks_go_on_in_the_child() -> None:
    """Before: the parent's probing thread was not copied into the child, and nothing started another, so the child
    kept the verdicts it was forked with for good."""
    upstreams = Upstreams()
    cfg = config("a")
    cfg["endpoints"]["a"]["health_check"] = {"interval_s": 0.05, "timeout_s": 1}
    client = holyroute.client(cfg, transport=upstreams.transport, log=False)
    deadline = time.monotonic() + 5
    while not upstreams.probes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert upstreams.probes, "the parent probes"

    def child(pipe: Any) -> None:
        before = len(upstreams.probes)
        status = chat(client)  # the child's first request starts its own checker
        deadline = time.monotonic() + 5
        while len(upstreams.probes) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        names = sorted(t.name for t in threading.enumerate() if t.name.startswith("holyroute"))
        pipe.send({"status": status, "probed": len(upstreams.probes) - before, "threads": names})
        client.close()

    report = in_a_forked_child(child)
    assert report["status"] == 200
    assert report["probed"] >= 2
    assert report["threads"] == ["holyroute-health"]
    client.close()


def test_shadow_copies_run_in_the_child() -> None:
    """Before: a child forked after the parent's first shadow copy inherited its pool without the pool's threads, so
    its copies queued and never ran."""
    upstreams = Upstreams()
    cfg = config("a", "s")
    cfg["routes"]["chat"] = {
        "targets": [{"model": "m", "endpoints": ["a"]}],
        "shadow": {"model": "m", "endpoints": ["s"], "sample": 1.0},
    }
    client = holyroute.client(cfg, transport=upstreams.transport, log=False)
    assert chat(client) == 200
    deadline = time.monotonic() + 5
    while "s.test" not in upstreams.hosts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert upstreams.hosts.count("s.test") == 1, "the parent's shadow copy ran"

    def child(pipe: Any) -> None:
        del upstreams.hosts[:]
        status = chat(client)
        deadline = time.monotonic() + 5
        while "s.test" not in upstreams.hosts and time.monotonic() < deadline:
            time.sleep(0.01)
        pipe.send({"status": status, "hosts": sorted(upstreams.hosts)})
        client.close()

    assert in_a_forked_child(child) == {"status": 200, "hosts": ["a.test", "s.test"]}
    client.close()


def test_an_rlock_the_forking_thread_holds_is_still_its_own_in_the_child() -> None:
    """The thread that forks may hold an RLock (a rollout engine calls event sinks with its lock held): it releases
    it in the child as it would have in the parent. Every other lock, held by a thread the child has not, is free."""
    own, others = new_rlock(), (new_rlock(), new_lock())

    def child(pipe: Any) -> None:
        own.release()  # the block below, still open in the child, holds it once
        pipe.send({"own": own.acquire(timeout=1), "others": [lock.acquire(timeout=1) for lock in others]})
        own.release()

    with held_by_another_thread(others[0]), held_by_another_thread(others[1]), own:
        report = in_a_forked_child(child)
    assert report == {"own": True, "others": [True, True]}


class KeepAlive(BaseHTTPRequestHandler):
    """A local upstream on HTTP/1.1 keep-alive that notes the client port each request came from."""

    protocol_version = "HTTP/1.1"
    ports: list[int]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.ports.append(self.client_address[1])
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def do_GET(self) -> None:  # a health check's probe
        self.ports.append(self.client_address[1])
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "11")
        self.end_headers()
        self.wfile.write(b'{"data":[]}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def keep_alive_upstream() -> Iterator[tuple[type[KeepAlive], dict[str, Any]]]:
    """A local keep-alive upstream and a configuration whose endpoint ``a`` is it (with health checks)."""
    handler = type("Handler", (KeepAlive,), {"ports": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    cfg = config("a")
    cfg["endpoints"]["a"]["base_url"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    cfg["endpoints"]["a"]["health_check"] = {"interval_s": 60, "timeout_s": 2}
    try:
        yield handler, cfg
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("first", ["two calls at once", "a streamed upload"])
def test_no_first_request_of_the_child_goes_out_on_the_parents_connections(first: str) -> None:
    """Before: the child's pool was renewed by the first routed call alone, so a request made meanwhile (a second
    thread's) or one holyroute passes through (a streamed upload, what the SDK's files.create sends) went out on its
    parent's socket."""
    with keep_alive_upstream() as (handler, cfg):
        client = holyroute.client(cfg, log=False)
        upload = f"{cfg['endpoints']['a']['base_url']}/files"
        try:
            assert chat(client) == 200
            parents = set(handler.ports)
            count = len(handler.ports)

            def child(pipe: Any) -> None:
                if first == "a streamed upload":
                    sent = client.post(upload, files={"file": ("x.jsonl", b"{}")})
                    statuses = [sent.status_code, chat(client)]
                else:
                    results: list[int] = []
                    threads = [threading.Thread(target=lambda: results.append(chat(client))) for _ in range(2)]
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join(5)
                    statuses = sorted(results)
                pipe.send({"statuses": statuses})

            assert in_a_forked_child(child) == {"statuses": [200, 200]}
            childs = set(handler.ports[count:])
            assert childs
            assert not childs & parents, "the child's requests go on connections of its own"
        finally:
            client.close()


def test_a_pool_the_child_cannot_build_leaves_it_on_its_parents_and_says_so() -> None:
    """A pool that cannot be built in the child (a CA or client-certificate file gone since the client was built, say):
    the child goes on with its parent's pool, as before this was renewed, with one event naming the problem; no call
    fails."""
    events: list[tuple[str, dict[str, Any]]] = []
    with keep_alive_upstream() as (_, cfg):
        client = holyroute.client(cfg, log=False, sinks=[lambda name, fields: events.append((name, fields))])
        transport = client._transport
        assert isinstance(transport, holyroute.Transport)

        def gone() -> httpx2.BaseTransport:
            raise FileNotFoundError(2, "No such file or directory", "/etc/holyroute/client.pem")

        transport._new_pool = gone
        try:
            assert chat(client) == 200

            def child(pipe: Any) -> None:
                statuses = [chat(client), chat(client)]
                failed = [fields for name, fields in events if name == "holyroute.pool_renew_failed"]
                pipe.send({"statuses": statuses, "failed": failed})

            report = in_a_forked_child(child)
        finally:
            client.close()
    assert report["statuses"] == [200, 200]
    assert report["failed"] == [
        {
            "error": "FileNotFoundError",
            "reason": "a forked process could not build a connection pool of its own; it uses its parent's",
        }
    ]


@pytest.mark.parametrize("built_by", ["client", "Transport"])
def test_the_child_opens_connections_of_its_own(built_by: str) -> None:
    """The connection pool holyroute built holds the parent's open keep-alive connections: before, the child sent its
    first call on the parent's socket (the same client port), where an answer can go to either process. Its health
    checks go through its own pool too."""
    with keep_alive_upstream() as (handler, cfg):
        if built_by == "client":
            client = holyroute.client(cfg, log=False)
        else:
            client = httpx2.Client(transport=holyroute.Transport(cfg, log=False))
        try:
            assert chat(client) == 200
            assert chat(client) == 200

            transport = client._transport
            assert isinstance(transport, holyroute.Transport)
            parents_pool = transport._inner
            parents = set(handler.ports)  # the connections the parent's pool opened (calls and probes)

            def child(pipe: Any) -> None:
                statuses = [chat(client), chat(client)]
                checker = transport._checker
                assert checker is not None
                own = transport._inner is not parents_pool and checker._transport is transport._inner
                pipe.send({"statuses": statuses, "own pool, probed through": own})

            count = len(handler.ports)
            assert in_a_forked_child(child) == {"statuses": [200, 200], "own pool, probed through": True}
            childs = set(handler.ports[count:])  # the child's calls and first probe (the parent's next is 60 s away)
            assert childs
            assert not childs & parents, "the child's calls go on connections of its own"
            assert chat(client) == 200
        finally:
            client.close()
