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


class Supervisor:
    def __init__(self, config: Path, workers: int, extra_args: list[str]) -> None:
        self.config = config
        self.workers = workers
        self.extra_args = extra_args
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: dict[int, int] = {}
        self.stopping = False

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

    def _forward(self, signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signum)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._forward)
        for index in range(self.workers):
            self._spawn(index)
        log.info("supervising %d workers", self.workers)
        while True:
            alive = False
            for index, process in list(self.processes.items()):
                code = process.poll()
                if code is None:
                    alive = True
                    continue
                if self.stopping or code == 0:
                    continue  # asked to stop, or finished by itself (--run-for)
                attempt = self.restarts.get(index, 0)
                delay = RESTART_BACKOFF[min(attempt, len(RESTART_BACKOFF) - 1)]
                log.error("worker %d exited with %s; restarting in %.1fs", index, code, delay)
                self.restarts[index] = attempt + 1
                time.sleep(delay)
                self._spawn(index)
                alive = True
            if not alive:
                return int(max(abs(p.returncode or 0) for p in self.processes.values()))
            time.sleep(0.2)
