"""``zoomq worker --concurrency PxS`` with P > 1: P worker processes of S render slots each, kept running.

Celery's pool is either processes (prefork) or threads, never both, so a worker with render slots is
one process (a threads pool), and P of them are P Celery workers, named ``<name>.1`` … ``<name>.P``.
This process starts and watches them. SIGTERM or SIGINT to it is passed to each (a warm shutdown),
SIGQUIT too (a cold one). A process that dies is started again: the pieces it held come back as
for a lost node, when their leases lapse. The pause before a restart doubles while it keeps dying.
A process that fails (a non-zero exit, not a signal) within seconds of its first start met a setup
error that a restart would only meet again: the group stops them all and exits with its code.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from zoomq.node.processes import terminate_with_parent

log = logging.getLogger("zoomq.worker")

FIRST_PAUSE = 1.0  # seconds before restarting a process that died; doubles up to MAX_PAUSE
MAX_PAUSE = 30.0
STABLE_AFTER = 60.0  # a process that ran this long before dying is restarted after FIRST_PAUSE again
SETUP_FAILURE_WITHIN = 30.0  # a first start that fails this soon is a setup error: the group stops
_POLL = 0.2


@dataclass
class _Member:
    index: int
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    pause: float = FIRST_PAUSE
    restart_at: float | None = None
    exit_codes: list[int] = field(default_factory=list)


def member_argv(argv: list[str], name: str, index: int) -> list[str]:
    """The command line of member ``index`` (from 1): ``zoomq worker`` with ``argv``, named ``name.index``."""
    return [sys.executable, "-m", "zoomq", "worker", *argv, "--name", f"{name}.{index}"]


class ProcessGroup:
    """P ``zoomq worker`` processes that live as long as this object runs (``run``)."""

    def __init__(self, argv: list[str], name: str, processes: int,
                 spawn: Callable[[list[str]], subprocess.Popen] | None = None):
        self.members = [_Member(i, member_argv(argv, name, i)) for i in range(1, processes + 1)]
        self._spawn = spawn or (lambda command: subprocess.Popen(command, preexec_fn=terminate_with_parent))
        self._stopping: signal.Signals | None = None
        self._failed: int | None = None  # the exit code of a member that failed at its first start

    def _start(self, member: _Member) -> None:
        member.proc = self._spawn(member.argv)
        member.started, member.restart_at = time.monotonic(), None
        log.info("worker process %d started (pid %d)", member.index, member.proc.pid)
        if self._stopping is not None:  # the signal came while it was being started
            member.proc.send_signal(self._stopping)

    def _signal(self, signum: int, _frame: object = None) -> None:
        """Pass a stop signal to every running member; after it, nothing restarts."""
        self._stopping = signal.Signals(signum)
        for member in self.members:
            if member.proc is not None and member.proc.poll() is None:
                member.proc.send_signal(signum)

    def _watch(self, member: _Member, now: float) -> None:
        """Restart ``member`` if it died (after its pause) unless the group is stopping."""
        if member.proc is not None and member.proc.poll() is not None:
            code = member.proc.returncode
            member.exit_codes.append(code)
            member.proc = None
            if self._stopping is None and code > 0 and len(member.exit_codes) == 1 \
                    and now - member.started < SETUP_FAILURE_WITHIN:
                log.error("worker process %d failed at its start (code %d); stopping the others", member.index, code)
                self._failed = code
                self._signal(signal.SIGTERM)
            elif self._stopping is None:
                if now - member.started >= STABLE_AFTER:
                    member.pause = FIRST_PAUSE
                member.restart_at = now + member.pause
                log.warning("worker process %d exited (code %d); starting it again in %.0f s",
                            member.index, code, member.pause)
                member.pause = min(MAX_PAUSE, member.pause * 2)
        if member.proc is None and member.restart_at is not None and now >= member.restart_at \
                and self._stopping is None:
            self._start(member)

    def run(self) -> int:
        """Start every member, keep them running until a stop signal, wait for them; the exit code
        is 0 when every member stopped cleanly."""
        stops = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
        before = {signum: signal.signal(signum, self._signal) for signum in stops}
        try:
            for member in self.members:
                self._start(member)
            while self._stopping is None or any(m.proc is not None for m in self.members):
                now = time.monotonic()
                for member in self.members:
                    self._watch(member, now)
                time.sleep(_POLL)
        finally:
            for signum, handler in before.items():
                signal.signal(signum, handler)
        if self._failed is not None:
            return self._failed
        log.info("worker processes stopped (%s)", self._stopping.name)
        last = [m.exit_codes[-1] for m in self.members if m.exit_codes]
        return 0 if all(code == 0 for code in last) else 1
