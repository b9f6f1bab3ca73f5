"""``state.url``: which Redis deployment to talk to, read from one URL. A total parser: it never raises, and its
problems never quote the URL (it may hold a password).

The forms, each also with ``rediss`` for TLS:

- ``redis://[[user]:password@]host[:port][/db]`` - one server (``unix:///path/to.sock?db=0`` for a local socket);
- ``redis+cluster://[[user]:password@]host[:port][,host[:port]...]`` - Redis Cluster: the hosts are seed nodes, the
  rest of the cluster is discovered from them (db is always 0 in a cluster);
- ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]`` - Sentinel: the hosts are the
  Sentinels (port 26379 by default), ``service`` the name they monitor the master by; the user and password are the
  master's and its replicas' (Sentinels are asked without them unless ``sentinel_password`` is given).

Query parameters: ``db`` (the number, as the path), ``ssl_ca_certs`` (a CA file to verify the server by),
``ssl_certfile`` / ``ssl_keyfile`` (a client certificate), ``ssl_check_hostname`` (``true`` / ``false``),
``ssl_cert_reqs`` (``required``, ``optional`` or ``none``), ``sentinel_username`` / ``sentinel_password``. A ``/``,
``?``, ``#`` or ``@`` in a user name or password must be percent-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypedDict
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["SCHEMES", "RedisUrl", "parse_redis_url"]

Kind = Literal["single", "cluster", "sentinel"]

#: scheme -> (deployment, TLS)
SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}

_CERT_REQS = ("required", "optional", "none")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_ENCODE = "a '/', '?', '#' or '@' in a user name or password must be percent-encoded (%2F, %3F, %23, %40)"
MAX_DB = 1_000_000


class _Options(TypedDict, total=False):
    ca_file: str
    cert_file: str
    key_file: str
    check_hostname: bool
    cert_reqs: str
    sentinel_username: str | None
    sentinel_password: str | None


@dataclass(frozen=True, slots=True)
class RedisUrl:
    """A parsed ``state.url``. The credentials never appear in its repr; :attr:`where` is safe to print."""

    kind: Kind
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()  # the server, the cluster's seed nodes, or the Sentinels
    socket: str | None = None  # unix:// only
    service: str | None = None  # Sentinel's name for the master
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool | None = None  # None: redis-py's default
    cert_reqs: str | None = None

    @property
    def scheme(self) -> str:
        if self.socket is not None:
            return "unix"
        return f"redis{'s' if self.tls else ''}{'' if self.kind == 'single' else '+' + self.kind}"

    @property
    def where(self) -> str:
        """The URL without credentials or query, for messages: ``rediss+sentinel://s1:26379,s2:26379/mymaster``."""
        if self.socket is not None:
            return f"unix://{self.socket}"
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.hosts)
        path = f"/{self.service}" if self.service else ""
        if self.kind != "cluster":
            path += f"/{self.db}"
        return f"{self.scheme}://{hosts}{path}"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every credential in the URL (to scrub from a message that might quote one)."""
        return tuple(s for s in (self.password, self.sentinel_password) if s)


def parse_redis_url(text: str) -> RedisUrl | str:
    """The deployment ``text`` names, or a problem (naming parts of the URL, never quoting them).

    >>> parse_redis_url("redis+sentinel://:pw@s1,s2:26380/mymaster/2").where
    'redis+sentinel://s1:26379,s2:26380/mymaster/2'
    >>> parse_redis_url("redis://:pw@cache:6380")
    RedisUrl(kind='single', tls=False, hosts=(('cache', 6380),), socket=None, service=None, db=0, ca_file=None, \
cert_file=None, key_file=None, check_hostname=None, cert_reqs=None)
    """
    if not isinstance(text, str) or len(text) > 10_000:  # pragma: no branch - the schema gives a str
        return "is not a URL"
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        return "must start with " + ", ".join(f"{s}://" for s in list(SCHEMES)[:-1]) + f" or {list(SCHEMES)[-1]}://"
    kind, tls = SCHEMES[scheme]
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    credentials, _, hostlist = authority.rpartition("@")
    path, _, query = tail.partition("#")[0].partition("?")
    if "@" in tail:
        # redis://:123/pw@host would be port 123 of no host, the password in the path
        return f"has an '@' after its host; {_ENCODE}"
    username, password = _credentials(credentials)
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False))
    except ValueError:
        return "has a query that cannot be read"
    found = _options(options, kind)
    if isinstance(found, str):
        return found
    if scheme == "unix":
        if hostlist or not path:
            return "unix:// needs a socket path: unix:///path/to/redis.sock"
        db = _db(options.get("db", "0"))
        if db is None:
            return f"has a db that is not a number from 0 to {MAX_DB}"
        return RedisUrl(kind, False, socket=unquote(path), db=db, username=username, password=password, **found)
    hosts = _hosts(hostlist, 26379 if kind == "sentinel" else 6379)
    if isinstance(hosts, str):
        return hosts
    if kind == "single" and len(hosts) > 1:
        return "names more than one host: use redis+cluster:// for a cluster or redis+sentinel:// for Sentinel"
    segments = [unquote(s) for s in path.split("/") if s]
    service = None
    if kind == "sentinel":
        if not segments:
            return "redis+sentinel:// needs the service name after the hosts: redis+sentinel://host:26379/mymaster"
        service, segments = segments[0], segments[1:]
        if not service.isprintable() or len(service) > 200:
            return "has a service name that is not printable text"
    if len(segments) > 1:
        return "has a path of more than one part (a db number, or for Sentinel the service then the db)"
    db = _db(segments[0] if segments else options.get("db", "0"))
    if db is None:
        return f"has a db that is not a number from 0 to {MAX_DB}"
    if kind == "cluster" and db:
        return "names a db other than 0: Redis Cluster has only db 0"
    return RedisUrl(kind, tls, hosts=hosts, service=service, db=db, username=username, password=password, **found)


def _credentials(text: str) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    user, colon, password = text.partition(":")
    return (unquote(user) or None), (unquote(password) if colon and password else None)


def _hosts(text: str, default_port: int) -> tuple[tuple[str, int], ...] | str:
    hosts = []
    for part in text.split(","):
        if not part:
            return "names no host (or an empty one between commas)"
        try:
            parts = urlsplit(f"//{part}")
            host, port = parts.hostname, parts.port
        except ValueError:
            return f"has a host whose port cannot be read; {_ENCODE}"
        if not host or parts.username is not None or parts.path:
            return f"has a host that cannot be read; {_ENCODE}"
        hosts.append((host, port or default_port))
    if len(hosts) > 100:
        return "names more than 100 hosts"
    return tuple(hosts)


def _db(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text[:8])
    return value if value <= MAX_DB else None


def _options(options: dict[str, str], kind: Kind) -> _Options | str:
    found: _Options = {}
    for name, value in options.items():
        if name == "db":
            continue
        if name == "ssl_ca_certs":
            found["ca_file"] = value
        elif name == "ssl_certfile":
            found["cert_file"] = value
        elif name == "ssl_keyfile":
            found["key_file"] = value
        elif name == "ssl_check_hostname":
            if value.lower() not in _BOOLEANS:
                return "has an ssl_check_hostname that is not true or false"
            found["check_hostname"] = _BOOLEANS[value.lower()]
        elif name == "ssl_cert_reqs":
            if value.lower() not in _CERT_REQS:
                return "has an ssl_cert_reqs that is not required, optional or none"
            found["cert_reqs"] = value.lower()
        elif name == "sentinel_username" and kind == "sentinel":
            found["sentinel_username"] = value or None
        elif name == "sentinel_password" and kind == "sentinel":
            found["sentinel_password"] = value or None
        else:
            shown = f"'{name}'" if name.isascii() and name.replace("_", "").isalnum() and len(name) <= 40 else "one"
            return (
                f"has a query parameter holyroute does not read ({shown}); it reads db, ssl_ca_certs, ssl_certfile, "
                "ssl_keyfile, ssl_check_hostname, ssl_cert_reqs and, for Sentinel, sentinel_username and "
                "sentinel_password"
            )
    return found
