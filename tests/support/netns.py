"""Separate hosts on one machine: Linux network namespaces joined by a bridge (root only).

Each host is a namespace with one interface (``eth0``) and its own address; the bridge lives in a
namespace of its own, so the machine's own network gets no interface, address or route. Cutting a
host sets its link down while its processes keep running, as on a partitioned node. ``remove()``
kills every process started on the hosts and deletes the namespaces, which takes their links along.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    name: str  # the namespace
    address: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        """``command`` inside this host, in a session of its own, output to ``log``."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.name, *command], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(proc)
        return proc

    def python(self, code: str, timeout: float = 30, env: dict | None = None) -> str:
        """Run Python ``code`` inside this host; its standard output."""
        done = subprocess.run(["ip", "netns", "exec", self.name, sys.executable, "-c", code], capture_output=True,
                              text=True, timeout=timeout, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"on {self.name}: {done.stderr[-2000:]}")
        return done.stdout

    def cut(self) -> None:
        ip("-n", self.name, "link", "set", "eth0", "down")

    def reconnect(self) -> None:
        ip("-n", self.name, "link", "set", "eth0", "up")


class Network:
    """``hosts`` namespaces on one bridge, addresses 10.<a>.<b>.1, .2, ... of a /24 chosen at random."""

    def __init__(self, roles: list[str]):
        self.tag = "zq" + secrets.token_hex(2)
        subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
        self.switch = f"{self.tag}-switch"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        try:
            self._add_namespace(self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for i, role in enumerate(roles, start=1):
                host = Host(f"{self.tag}-{role}", f"{subnet}.{i}")
                self._add_namespace(host.name)
                port = f"port{i}"
                ip("-n", host.name, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch)
                ip("-n", self.switch, "link", "set", port, "master", "br0")
                ip("-n", self.switch, "link", "set", port, "up")
                ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", "eth0")
                ip("-n", host.name, "link", "set", "eth0", "up")
                ip("-n", host.name, "link", "set", "lo", "up")
                self.hosts[role] = host
        except BaseException:
            self.remove()
            raise

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._namespaces.append(name)

    def remove(self) -> None:
        for host in self.hosts.values():
            for proc in host.processes:
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.wait(timeout=30)
        for name in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._namespaces.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def available() -> str | None:
    """Why hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if subprocess.run(["sh", "-c", "command -v ip"], capture_output=True).returncode != 0:
        return "the ip command (iproute2) is not installed"
    return None
