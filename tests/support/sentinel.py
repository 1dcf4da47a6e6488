"""A Redis that fails over, on loopback: a primary, a replica and three sentinels (``redis-server
--sentinel``), all with one password, a master declared down after a second. ``url`` is the
``sentinel://`` URL zoomq is given; ``stop()`` ends every process, whatever state they are in."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis

from zoomq.node.processes import RedisServer, free_port, wait_for

MASTER = "zoomq-test"


class Sentinel:
    """One ``redis-server --sentinel`` on a free port; its config file (which it rewrites) is private."""

    def __init__(self, binary: str, folder: Path, primary_port: int, password: str, quorum: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        conf = folder / "sentinel.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
        with os.fdopen(fd, "w") as f:
            f.write(f'port {self.port}\nbind 127.0.0.1\ndir "{folder}"\nlogfile "{folder / "sentinel.log"}"\n'
                    f'requirepass "{password}"\nsentinel sentinel-pass "{password}"\n'
                    f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} {quorum}\n"
                    f'sentinel auth-pass {MASTER} "{password}"\n'
                    f"sentinel down-after-milliseconds {MASTER} 1000\n"
                    f"sentinel failover-timeout {MASTER} 4000\n")
        self.proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._answers, 30, f"the sentinel on port {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=2)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the sentinel on port {self.port} exited ({self.proc.returncode})")
        try:
            return bool(self.client().ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


class SentinelGroup:
    """The primary, its replica and three sentinels watching it; ``url`` names them all."""

    def __init__(self, folder: Path, password: str):
        self.password = password
        self.servers: list[RedisServer] = []
        self.sentinels: list[Sentinel] = []
        try:
            self.primary = self._server(folder / "primary")
            self.replica = self._server(folder / "replica", (f"replicaof 127.0.0.1 {self.primary.port}",
                                                             f'masterauth "{password}"'))
            wait_for(lambda: self.replica.client().info("replication").get("master_link_status") == "up", 30,
                     "the replica to sync with the primary")
            for k in range(3):
                self.sentinels.append(Sentinel(self.primary.binary, folder / f"sentinel-{k}", self.primary.port,
                                               password, quorum=2))
            wait_for(lambda: all(self._knows_everyone(s) for s in self.sentinels), 30,
                     "the sentinels to find the replica and each other")
        except BaseException:
            self.stop()
            raise

    def _server(self, folder: Path, config: tuple[str, ...] = ()) -> RedisServer:
        self.servers.append(RedisServer(folder, password=self.password, config=config))
        return self.servers[-1]

    @staticmethod
    def _knows_everyone(sentinel: Sentinel) -> bool:
        master: Any = sentinel.client().sentinel_master(MASTER)
        return master["num-slaves"] >= 1 and master["num-other-sentinels"] >= 2

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"sentinel://:{quote(self.password, safe='')}@{hosts}/{MASTER}/0"

    def master_port(self) -> int:
        """The master's port as the first sentinel that answers names it now."""
        for sentinel in self.sentinels:
            try:
                address: Any = sentinel.client().sentinel_get_master_addr_by_name(MASTER)
                return int(address[1])
            except redis.ConnectionError:
                continue
        raise RuntimeError("no sentinel answers")

    def kill_primary(self) -> None:
        """SIGKILL: no shutdown, no last write to the replica."""
        assert self.primary.proc is not None
        self.primary.proc.kill()
        self.primary.proc.wait(timeout=10)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait(timeout=10)
