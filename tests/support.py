"""Real processes for integration tests: servers and redis on free loopback ports.

Every wait is scaled by WS_TEST_TIMEOUT_FACTOR so a slow machine can stretch them all at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TIMEOUT_FACTOR = float(os.environ.get("WS_TEST_TIMEOUT_FACTOR", "1"))
IN_CI = os.environ.get("CI", "").lower() == "true"


def scaled(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(name: str) -> str:
    """The path of `name`; a missing one fails under CI=true (never a silent skip)."""
    path = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    deadline = time.monotonic() + scaled(timeout)
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or predicate}: last error {last_error!r}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=scaled(timeout)) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def get_json(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    status, body = http_get(url, timeout)
    return status, json.loads(body)


def base_env(env: dict[str, str] | None) -> dict[str, str]:
    """The parent's environment without any WS_ variable, plus `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
    clean.pop("WEB_CONCURRENCY", None)
    clean.pop("PORT", None)
    clean["PATH"] = f"{BIN}:{clean.get('PATH', '')}"
    clean.setdefault("WS_LOG_LEVEL", "info")
    clean.update(env or {})
    return clean


class ServerProcess:
    """`ws-service serve` (or another command) as a child process on a free port."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        port: int | None = None,
        argv: Sequence[str] | None = None,
        cwd: Path | None = None,
        scheme: str = "http",
        ready_path: str = "/healthz",
    ) -> None:
        self.port = port or free_port()
        self.env = base_env({"WS_HOST": "127.0.0.1", "WS_PORT": str(self.port), **(env or {})})
        self.argv = list(argv or [str(BIN / "ws-service"), "serve"])
        self.cwd = cwd or ROOT
        self.scheme = scheme
        self.ready_path = ready_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._logdir = tempfile.TemporaryDirectory(prefix="ws-test-")
        self.log_path = Path(self._logdir.name) / "server.log"

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.scheme == 'https' else 'ws'}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, wait: bool = True) -> ServerProcess:
        log = open(self.log_path, "ab")  # handed to the child, closed below
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log_text()}")
            return self._ping()

        try:
            wait_until(ready, timeout, what=f"server on port {self.port}")
        except AssertionError:
            raise AssertionError(f"server did not start:\n{self.log_text()[-3000:]}") from None

    def _ping(self) -> bool:
        try:
            if self.scheme == "https":
                import ssl

                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                with urllib.request.urlopen(
                    self.http_url + self.ready_path, timeout=1, context=context
                ) as r:
                    return bool(r.status == 200)
            return http_get(self.http_url + self.ready_path, timeout=1)[0] == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal the process, wait for it to exit, and return its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise AssertionError(f"server did not exit within {timeout}s") from None

    # Defined after stop(): its default argument needs the signal module, not this method.
    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill_group(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill_group()
            self._logdir.cleanup()


class RedisServer:
    """A private redis-server on a free port, which tests may kill and restart."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = require_binary("redis-server")
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="ws-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self.ping, 10, what=f"redis on {self.port}")
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._dir.cleanup()


@contextlib.contextmanager
def server(env: dict[str, str] | None = None, **kwargs: Any) -> Iterator[ServerProcess]:
    with ServerProcess(env, **kwargs) as proc:
        yield proc
