"""Start `segflowd` as a real child process for tests, and stop it by PID."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

_LISTENING = re.compile(r"listening on (http://[0-9.]+:\d+)")


def free_port() -> int:
    """Return a loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    """Return a process's peak resident memory (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Daemon:
    """A `segflowd --config` child process whose output is collected in memory.

    With `log_path`, the output goes to that file instead, so that no thread
    of the calling process competes for the GIL while a benchmark measures.
    """

    def __init__(self, config_path: Path, env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.lines: list[str] = []
        self.url: str | None = None
        self.log_path = log_path
        self._ready = threading.Event()
        self._log_file = open(log_path, "w") if log_path else None  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "segflowd", "--config", str(config_path)],
            stdout=self._log_file or subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        if log_path is None:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            match = _LISTENING.search(line)
            if match:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 30.0) -> str:
        if self.log_path is not None:
            self._poll_log(timeout)
        self._ready.wait(timeout)
        if self.url is None:
            self.kill()
            raise RuntimeError("segflowd did not start:\n" + "\n".join(self.lines))
        return self.url

    def _poll_log(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            text = self.log_path.read_text()
            match = _LISTENING.search(text)
            if match:
                self.url = match.group(1)
                break
            time.sleep(0.05)
        self.lines = self.log_path.read_text().splitlines()
        self._ready.set()

    def terminate(self, timeout: float = 60.0) -> int:
        """Send SIGTERM and wait for the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def output(self) -> str:
        deadline = time.monotonic() + 5
        while self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.log_path is not None:
            return self.log_path.read_text()
        return "\n".join(self.lines)
