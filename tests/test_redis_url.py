"""``state.url``: every deployment form is read by one total parser, and no credential ever shows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from holyroute import load_config
from holyroute.boundary.redis_url import RedisUrl, parse_redis_url
from holyroute.exceptions import ConfigError
from holyroute.state.redis.connect import open_client
from holyroute.state.redis.payloads import redacted

SECRET = "Zq9Sup3rSecret"


def parsed(url: str) -> RedisUrl:
    found = parse_redis_url(url)
    assert isinstance(found, RedisUrl), found
    return found


def config(url: str) -> dict[str, object]:
    return {
        "endpoints": {"a": {"base_url": "http://127.0.0.1:9/v1"}},
        "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["a"]}]}},
        "state": {"backend": "redis", "url": url},
    }


class TestForms:
    """Each deployment's URL, as the documentation shows it."""

    def test_one_server(self) -> None:
        url = parsed(f"redis://:{SECRET}@cache:6380/2")
        assert (url.kind, url.tls, url.hosts, url.db, url.password) == ("single", False, (("cache", 6380),), 2, SECRET)
        assert url.where == "redis://cache:6380/2"

    def test_tls_with_a_ca_file_and_an_acl_user(self) -> None:
        url = parsed(f"rediss://fleet:{SECRET}@cache/0?ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false")
        assert (url.tls, url.username, url.password, url.ca_file, url.check_hostname) == (
            True,
            "fleet",
            SECRET,
            "/etc/ca.pem",
            False,
        )
        assert url.where == "rediss://cache:6379/0"

    def test_cluster_seed_nodes(self) -> None:
        url = parsed(f"rediss+cluster://:{SECRET}@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002")
        assert url.kind == "cluster"
        assert url.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
        assert url.where == "rediss+cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002"

    def test_sentinel(self) -> None:
        url = parsed(f"redis+sentinel://app:{SECRET}@s1,s2:26380/mymaster/3?sentinel_password={SECRET}x")
        assert (url.kind, url.service, url.db, url.hosts) == ("sentinel", "mymaster", 3, (("s1", 26379), ("s2", 26380)))
        assert url.secrets == (SECRET, f"{SECRET}x")
        assert url.where == "redis+sentinel://s1:26379,s2:26380/mymaster/3"

    def test_unix_socket(self) -> None:
        url = parsed(f"unix://:{SECRET}@/run/redis.sock?db=1")
        assert (url.socket, url.db, url.where) == ("/run/redis.sock", 1, "unix:///run/redis.sock")

    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            ("redis://a:1,b:2", "names more than one host"),
            ("redis+sentinel://s1:26379", "needs the service name"),
            ("redis+cluster://a:7000/1", "Redis Cluster has only db 0"),
            ("redis://a/0?socket_timeout=1", "does not read ('socket_timeout')"),
            ("redis://a/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
            ("redis://a:port/0", "port cannot be read"),
            ("redis://:123/pw@host", "'@' after its host"),
            ("redis://a/x", "db that is not a number"),
            ("memcached://a", "must start with redis://"),
        ],
    )
    def test_problems_name_the_part_and_the_fix(self, url: str, problem: str) -> None:
        found = parse_redis_url(url)
        assert isinstance(found, str)
        assert problem in found

    def test_every_form_loads_and_none_shows_its_password(self) -> None:
        for url in (
            f"redis+cluster://:{SECRET}@127.0.0.1:7000",
            f"redis+sentinel://:{SECRET}@127.0.0.1:26379/mymaster",
            f"rediss://u:{SECRET}@127.0.0.1:6390/0?ssl_ca_certs=/tmp/ca.pem",
        ):
            loaded = load_config(config(url))
            assert SECRET not in repr(loaded.state)
            assert SECRET not in redacted(url)
            assert SECRET not in repr(parsed(url))

    def test_a_bad_url_fails_at_load_without_the_password(self) -> None:
        with pytest.raises(ConfigError) as caught:
            load_config(config(f"redis+sentinel://:{SECRET}@s1:26379"))
        assert "state.url" in str(caught.value)
        assert "service name" in str(caught.value)
        assert SECRET not in str(caught.value)

    def test_clients_are_built_without_connecting_and_show_no_password(self) -> None:
        """Building a client connects to nothing (a cluster client does: its seeds must answer, see test_fleet)."""
        for url in (f"redis://:{SECRET}@127.0.0.1:9/0", f"redis+sentinel://:{SECRET}@127.0.0.1:9/mymaster"):
            client = open_client(parsed(url), timeout=0.01, connect_timeout=0.01)
            try:
                assert client.get_connection_kwargs()["password"] == SECRET
                assert client.get_connection_kwargs()["client_name"] == "holyroute"
                assert SECRET not in repr(client)
            finally:
                client.close()


class TestTotal:
    @given(text=st.text(max_size=80))
    def test_never_raises(self, text: str) -> None:
        found = parse_redis_url(text)
        assert isinstance(found, RedisUrl) or len(found) < 400

    @given(
        scheme=st.sampled_from(["redis", "rediss", "redis+cluster", "redis+sentinel", "rediss+sentinel", "unix", "x"]),
        user=st.text(alphabet="abc:%", max_size=3),
        junk=st.text(alphabet="/?#@:[],% ", max_size=3),
        rest=st.text(max_size=24),
    )
    def test_no_secret_in_any_problem_or_display(self, *, scheme: str, user: str, junk: str, rest: str) -> None:
        url = f"{scheme}://{user}:{SECRET}{junk}@{rest}"
        found = parse_redis_url(url)
        shown = found if isinstance(found, str) else f"{found.where} {found!r}"
        assert SECRET[:6] not in shown
        assert SECRET[:6] not in redacted(url)
