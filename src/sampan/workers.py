"""``sampan up --workers N``: a supervisor process and N node processes sharing one port.

Each worker binds the gateway port with SO_REUSEPORT, so the kernel spreads connections
across them. Worker 0 also runs the consumers and tasks; the others only serve HTTP. The
supervisor forwards SIGTERM/SIGINT/SIGHUP to every worker and restarts one that dies.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("sampan.workers")

RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)
STABLE_AFTER = 60.0
"""A worker up this long before it died restarts with the shortest backoff again."""


class Supervisor:
    def __init__(
        self, config: Path, workers: int, extra_args: list[str], run_for: float | None = None
    ) -> None:
        self.config = config
        self.run_for = run_for
        self.workers = workers
        self.extra_args = extra_args
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: dict[int, int] = {}
        self.started_at: dict[int, float] = {}
        self.stopping = False
        self.running_at_stop: set[int] = set()

    def _spawn(self, index: int) -> None:
        command = [
            sys.executable,
            "-m",
            "sampan.cli",
            "up",
            str(self.config),
            "--worker",
            f"{index}/{self.workers}",
            *self.extra_args,
        ]
        self.processes[index] = subprocess.Popen(command)
        self.started_at[index] = time.monotonic()

    def _forward(self, signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            self.stopping = True
            # The stop is judged by how these exit; an earlier crash was logged already.
            self.running_at_stop = {
                i for i, process in self.processes.items() if process.poll() is None
            }
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signum)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._forward)
        for index in range(self.workers):
            self._spawn(index)
        log.info("supervising %d workers", self.workers)
        # --run-for is timed here, not in each worker: workers that started a few hundred ms
        # apart would otherwise close their listeners at different moments, and a client
        # with a keep-alive connection to the first one would see it close under it.
        stop_at = None if self.run_for is None else time.monotonic() + self.run_for
        while True:
            if stop_at is not None and not self.stopping and time.monotonic() >= stop_at:
                self._forward(signal.SIGTERM, None)
            alive = False
            for index, process in list(self.processes.items()):
                code = process.poll()
                if code is None:
                    alive = True
                    continue
                if self.stopping or code == 0:
                    continue  # asked to stop, or finished by itself (--run-for)
                if time.monotonic() - self.started_at.get(index, 0.0) > STABLE_AFTER:
                    self.restarts[index] = 0  # it had been fine for a while: back off afresh
                attempt = self.restarts.get(index, 0)
                delay = RESTART_BACKOFF[min(attempt, len(RESTART_BACKOFF) - 1)]
                log.error("worker %d exited with %s; restarting in %.1fs", index, code, delay)
                self.restarts[index] = attempt + 1
                time.sleep(delay)
                if self.stopping:  # SIGTERM arrived during the backoff: nothing to restart for
                    continue
                self._spawn(index)
                alive = True
            if not alive:
                judged = (
                    [self.processes[i] for i in self.running_at_stop]
                    if self.stopping
                    else list(self.processes.values())
                )
                return int(max((abs(p.returncode or 0) for p in judged), default=0))
            time.sleep(0.2)
