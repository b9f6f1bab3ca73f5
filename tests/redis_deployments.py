"""Real Redis deployments for the fleet tests, started on free 127.0.0.1 ports and stopped afterwards: a cluster of
three masters and three replicas (``redis-cli --cluster create``), Sentinel (a master, a replica, three Sentinels),
and a TLS server with a self-signed CA (made by ``openssl``) and an ACL user.

Each class starts its processes in ``start()`` and ends every one of them in ``stop()`` (also on a failed start).
Every wait is bounded. Tests skip with the reason when ``redis-server`` / ``redis-cli`` / ``openssl`` is absent.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster
import redis.sentinel

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
OPENSSL = shutil.which("openssl")
NODE_TIMEOUT_MS = 1000  # cluster-node-timeout and Sentinel's down-after-milliseconds: a failover in a few seconds


def need(*tools: tuple[str, str | None]) -> None:
    """Skip, naming what is missing, unless every tool is installed."""
    missing = [name for name, path in tools if path is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: apt-get install redis-server openssl)")


def free_ports(count: int, *, bus: bool = False) -> list[int]:
    """``count`` ports on 127.0.0.1 nothing listens on (and, with ``bus``, nor on port + 10000: a cluster's bus)."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port in found or (bus and (port + 10000 > 65535 or not _free(port + 10000))):
            continue
        found.append(port)
    return found


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for(done: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``done`` every 20 ms for at most ``timeout_s``; the seconds it took. Fails saying ``what``."""
    started = time.monotonic()
    while True:
        try:
            if done():
                return time.monotonic() - started
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError):
            pass
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.02)


class Node:
    """One ``redis-server`` process (a data node or a Sentinel)."""

    def __init__(self, directory: Path, port: int, *args: str, sentinel_conf: Path | None = None) -> None:
        self.port = port
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        assert REDIS_SERVER is not None
        head = [REDIS_SERVER, str(sentinel_conf), "--sentinel"] if sentinel_conf else [REDIS_SERVER]
        self.command = [
            *head,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--logfile",
            str(directory / "redis.log"),
            *(() if sentinel_conf else ("--save", "", "--appendonly", "no")),
            *args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process vanishes as a crashed host would."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class Cluster:
    """Redis Cluster: three masters, each with one replica, on free ports."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        need(("redis-server", REDIS_SERVER), ("redis-cli", REDIS_CLI))
        self.ports = free_ports(masters * 2, bus=True)
        self.nodes = [
            Node(
                directory / f"node-{port}",
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / f"node-{port}" / "nodes.conf"),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--repl-diskless-sync-delay",
                "0",
            )
            for port in self.ports
        ]
        self.masters = masters
        self._replica_of: dict[int, int] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                wait_for(lambda node=node: self._client(node.port).ping(), 10, f"node {node.port} to answer")
            assert REDIS_CLI is not None
            created = subprocess.run(
                [
                    REDIS_CLI,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-2000:]
            wait_for(self._ready, 30, "the cluster to cover every slot, every node knowing the others, replicas synced")
        except BaseException:
            self.stop()
            raise

    def _client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=0.5)

    def _ready(self) -> bool:
        for node in self.nodes:
            if not node.alive:
                continue
            with contextlib.closing(self._client(node.port)) as client:
                info = client.cluster("info")
                if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) < len(self.nodes):
                    return False
                replication = client.info("replication")
                if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                    return False  # a replica that never synced cannot take over
        return len(self.master_ports()) == self.masters

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode("127.0.0.1", port) for port in self.ports],
            socket_timeout=2,
            socket_connect_timeout=1,
        )

    def master_ports(self) -> list[int]:
        """The ports of the masters a live node knows (sorted)."""
        for node in self.nodes:
            if node.alive:
                with contextlib.closing(self._client(node.port)) as client:
                    nodes = client.cluster("nodes")
                return sorted(
                    int(address.split(":")[1].split("@")[0])
                    for address, info in nodes.items()
                    if "master" in info["flags"] and "fail" not in info["flags"] and info["connected"]
                )
        return []

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        with contextlib.closing(self.client()) as client:
            node = client.get_node_from_key(key)
            assert node is not None
            return int(node.port)

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def kill_master(self, port: int) -> float:
        """SIGKILL the master on ``port``; the Unix time the signal was sent."""
        self._replica_of[port] = self.replica_of(port)
        killed = time.time()
        self.node(port).kill()
        return killed

    def replica_of(self, port: int) -> int:
        """The port of the replica of the master on ``port``."""
        with contextlib.closing(self._client(port)) as client:
            nodes = client.cluster("nodes")
        master_id = next(info["node_id"] for address, info in nodes.items() if address.endswith(f":{port}"))
        return next(
            int(address.split(":")[1].split("@")[0])
            for address, info in nodes.items()
            if info["master_id"] == master_id
        )

    def promoted(self, old: int) -> bool:
        """True once the replica of the (killed) master on ``old`` answers as a master: it took the slots over."""
        replica = self._replica_of.get(old) or self.replica_of(old)
        with contextlib.closing(self._client(replica)) as client:
            return bool(client.info("replication").get("role") == "master")

    def settled(self, old: int) -> bool:
        """True once every live node agrees the cluster is whole again without the master on ``old``."""
        return self._ready_without(old)

    def _ready_without(self, old: int) -> bool:
        for node in self.nodes:
            if node.alive:
                with contextlib.closing(self._client(node.port)) as client:
                    info = client.cluster("info")
                    if info.get("cluster_state") != "ok":
                        return False
        masters = self.master_ports()
        return old not in masters and len(masters) == self.masters

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class Sentinels:
    """A master, its replicas (one by default) and three Sentinels watching them as ``mymaster``."""

    SERVICE = "mymaster"

    def __init__(self, directory: Path, *args: str, replicas: int = 1) -> None:
        need(("redis-server", REDIS_SERVER))
        ports = free_ports(4 + replicas)
        self.master_port, self.replica_ports = ports[0], ports[1 : 1 + replicas]
        self.replica_port = self.replica_ports[0]
        self.sentinel_ports = ports[1 + replicas :]
        self.replicas = replicas
        self.data = [Node(directory / "master", self.master_port, *args)] + [
            Node(directory / f"replica-{port}", port, "--replicaof", "127.0.0.1", str(self.master_port), *args)
            for port in self.replica_ports
        ]
        self.sentinels = []
        for port in self.sentinel_ports:
            conf = directory / f"sentinel-{port}" / "sentinel.conf"
            conf.parent.mkdir(parents=True)
            conf.write_text(
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {self.SERVICE} 10000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            self.sentinels.append(Node(conf.parent, port, sentinel_conf=conf))
        self._args = args

    def url(self, credentials: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{credentials}{hosts}/{self.SERVICE}/0"

    def start(self) -> None:
        try:
            for node in [*self.data, *self.sentinels]:
                node.start()
            wait_for(self._replicating, 20, "the replicas to sync with the master")
            wait_for(lambda: self._sentinels_agree(self.master_port, self.replicas), 20, "the Sentinels to see all")
        except BaseException:
            self.stop()
            raise

    def _replicating(self) -> bool:
        for port in self.replica_ports:
            with contextlib.closing(redis.Redis(port=port, socket_timeout=1)) as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
        return True

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=0.5, decode_responses=True)

    def master(self) -> int:
        """The master's port, as the first Sentinel that answers says."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError), contextlib.closing(self.sentinel(port)) as client:
                return int(client.sentinel_get_master_addr_by_name(self.SERVICE)[1])
        raise AssertionError("no Sentinel answers")

    def _sentinels_agree(self, port: int, replicas: int) -> bool:
        for sentinel in self.sentinel_ports:
            with contextlib.closing(self.sentinel(sentinel)) as client:
                found = client.sentinel_master(self.SERVICE)
                if int(found["port"]) != port or int(found["num-slaves"]) < replicas:
                    return False
                if int(found["num-other-sentinels"]) < len(self.sentinel_ports) - 1:
                    return False
        return True

    def agree(self, port: int) -> bool:
        """True once every Sentinel names the master on ``port``."""
        for sentinel in self.sentinel_ports:
            with contextlib.closing(self.sentinel(sentinel)) as client:
                if int(client.sentinel_get_master_addr_by_name(self.SERVICE)[1]) != port:
                    return False
        return True

    def failover(self) -> float:
        """``SENTINEL FAILOVER``: the replica becomes the master. The Unix time it was asked."""
        asked = time.time()
        with contextlib.closing(self.sentinel(self.sentinel_ports[0])) as client:
            client.execute_command("SENTINEL FAILOVER", self.SERVICE)
        return asked

    def promoted(self, old: int) -> bool:
        """True once the former replica answers as the master."""
        new = self.master()
        if new == old:
            return False
        with contextlib.closing(redis.Redis(port=new, socket_timeout=1)) as client:
            return bool(client.info("replication").get("role") == "master")

    def stop(self) -> None:
        for node in [*self.sentinels, *self.data]:
            node.stop()


class TlsServer:
    """One ``redis-server`` speaking only TLS (a self-signed CA, a server certificate for 127.0.0.1), with an ACL
    user ``fleet`` whose password is :attr:`password`; the default user is off."""

    USER = "fleet"

    def __init__(self, directory: Path, password: str) -> None:
        need(("redis-server", REDIS_SERVER), ("openssl", OPENSSL))
        self.password = password
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = directory / "ca.pem"
        self._certificates()
        [self.port] = free_ports(1)
        self.node = Node(
            directory / "server",
            self.port,
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(directory / "server.pem"),
            "--tls-key-file",
            str(directory / "server.key"),
            "--tls-ca-cert-file",
            str(self.ca),
            "--tls-auth-clients",
            "no",
            "--user",
            "default",
            "off",
            "--user",
            self.USER,
            "on",
            f">{password}",
            "~*",
            "&*",
            "+@all",
        )

    def _certificates(self) -> None:
        d = self.directory
        assert OPENSSL is not None

        def run(*args: str) -> None:
            done = subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr[-2000:]

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=holyroute test CA",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))  # fmt: skip
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))  # fmt: skip
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", str(d / "san.ext"), "-out", str(d / "server.pem"))  # fmt: skip

    def url(self, password: str) -> str:
        return f"rediss://{self.USER}:{password}@127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}"

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self.ca),
            username=self.USER,
            password=self.password,
            socket_timeout=2,
            socket_connect_timeout=1,
        )

    def start(self) -> None:
        self.node.start()
        try:
            wait_for(self._ping, 10, f"the TLS server on {self.port} to answer")
        except BaseException:
            self.stop()
            raise

    def _ping(self) -> bool:
        if not self.node.alive:
            pytest.fail(f"redis-server --tls-port exited (built without TLS?):\n{self.node.log()}")
        with contextlib.closing(self.client()) as client:
            return bool(client.ping())

    def stop(self) -> None:
        self.node.stop()


@contextlib.contextmanager
def running(deployment: Cluster | Sentinels | TlsServer) -> Iterator[None]:
    deployment.start()
    try:
        yield
    finally:
        deployment.stop()
