"""Running the real service (or the bot) in a child process, for end-to-end tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Started:
    """Something started for a `with` block and stopped after it, or by `start()`/`stop()`."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class ChildProcess(Started):
    """A program of this project in a child process, logging to a file; `ready()` says when
    it serves. Use it as a context manager, or `start()` and `stop()`."""

    label = "child process"

    def __init__(self, argv: list[str], env: dict[str, str], *, cwd: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._argv = argv
        self._env = env
        self._cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Self:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._argv, cwd=self._cwd, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the {self.label} exited early:\n{self.log()}")
            if self.ready():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the {self.label} was not ready in {timeout} s:\n{self.log()}")

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (graceful) or SIGKILL (a crash), then wait for the process to end."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


class ServiceProcess(ChildProcess):
    """`qqrag serve` in a child process with its own environment; `url` once it answers."""

    label = "service"

    def __init__(self, env: dict[str, str], *, cwd: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, "-m", "agent.cli", "serve"],
            {**os.environ, **env, "QQRAG_HOST": "127.0.0.1", "QQRAG_PORT": str(self.port)},
            cwd=cwd,
            log_path=cwd / f"service-{self.port}.log",
        )

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def wait_workers(self, count: int, timeout: float = 60.0) -> None:
        """Until `count` workers have started (uvicorn logs each one's startup): the first one
        answering /healthz does not mean the others are up."""
        deadline = time.monotonic() + timeout
        while self.log().count("Application startup complete") < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} workers not ready in {timeout} s:\n{self.log()}")
            time.sleep(0.1)
