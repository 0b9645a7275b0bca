"""Running the real service (or the bot) in a child process, for end-to-end tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


START_TIMEOUT_S = 120.0
"""How long a process may take to be ready: seconds on a quiet machine, but a loaded one
(CI beside other work) was seen to need over 30 s for two workers' first start. The wait
ends as soon as it is ready."""


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

    @property
    def pid(self) -> int:
        assert self._process is not None, f"the {self.label} is not running"
        return self._process.pid

    def start(self, timeout: float = START_TIMEOUT_S) -> Self:
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

    def __init__(
        self,
        env: dict[str, str],
        *,
        cwd: Path,
        port: int | None = None,
        under: Sequence[str] = (),
    ) -> None:
        """`under`: a program that runs the service, such as `unshare … sh -c '…; exec "$@"'`."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [*under, sys.executable, "-m", "agent.cli", "serve"],
            {**os.environ, **env, "QQRAG_HOST": "127.0.0.1", "QQRAG_PORT": str(self.port)},
            cwd=cwd,
            log_path=cwd / f"service-{self.port}.log",
        )

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def wait_workers(self, count: int, timeout: float = START_TIMEOUT_S) -> None:
        """Until `count` workers have started (uvicorn logs each one's startup): the first one
        answering /healthz does not mean the others are up."""
        deadline = time.monotonic() + timeout
        while self.log().count("Application startup complete") < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} workers not ready in {timeout} s:\n{self.log()}")
            time.sleep(0.1)


class FreezableProxy(Started):
    """A TCP proxy on 127.0.0.1 in front of `target` that can be frozen: while frozen it
    forwards nothing, either way, on open connections and new ones alike, and closes nothing,
    as a network partition or a frozen server would; thawed, it delivers what it held.
    `port` is where clients connect."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._flowing = threading.Event()
        self._flowing.set()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    def start(self) -> Self:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def stop(self) -> None:
        self.thaw()
        for sock in [self._listener, *self._sockets]:
            if sock is not None:
                sock.close()
        self._listener, self._sockets = None, []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return
            self._flowing.wait()
            far = socket.create_connection(self.target)
            self._sockets += [near, far]
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # One side closed: close the other, as a real connection would end.
            for sock in (source, sink):
                sock.close()
