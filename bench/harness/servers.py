"""The servers under test and how to start, probe and stop them.

Three targets, each started fresh for every scenario, pinned with taskset to the server core:
  node        the seed's Node `ws` servers (bench/reference/node_ws_server.js)
  naive       the naive FastAPI app under plain `uvicorn` (bench/reference/naive_fastapi.py)
  ws-service  this project: `ws-service serve`, or gunicorn with several workers
Plus redis-server for the cluster scenario. Every process is started in its own session so the
whole tree it forks can be stopped through its process group.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import procfs

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
VENV_BIN = ROOT / ".venv" / "bin"

# Production mode refuses API keys shorter than 16 characters.
API_KEY = "benchkey-0123456789abcdef"

TARGETS = ("node", "naive", "ws-service")
LABELS = {"node": "Node ws", "naive": "naive FastAPI", "ws-service": "ws-service"}


class ServerError(RuntimeError):
    """A server could not be started (or is not installed)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Launch:
    """What to run for one target: argv, environment, working directory, readiness probe."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    ready_path: str = "/"
    query: str = ""


def base_env() -> dict[str, str]:
    """The harness's environment minus any WS_* settings, with the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
    env.pop("WEB_CONCURRENCY", None)
    env.pop("PORT", None)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ws_service_env(port: int, *, workers: int, broker_url: str) -> dict[str, str]:
    return {
        "WS_HOST": "127.0.0.1",
        "WS_PORT": str(port),
        "WS_WORKERS": str(workers),
        "WS_BROKER_URL": broker_url,
        "WS_AUTH_MODE": "api_key",
        "WS_API_KEYS": API_KEY,
        "WS_ENV": "production",
        "WS_MAX_CONNECTIONS": "20000",
        "WS_LOG_LEVEL": "warning",
    }


def launch_for(
    target: str, port: int, *, workers: int = 1, broker_url: str = "memory://"
) -> Launch:
    """The command line for a target; raises ServerError when it is not installed."""
    if target == "node":
        node = shutil.which("node")
        if not node:
            raise ServerError("node is not installed")
        script = BENCH / "reference" / "node_ws_server.js"
        return Launch([node, str(script), "--port", str(port), "--host", "127.0.0.1"])
    if target == "naive":
        uvicorn = VENV_BIN / "uvicorn"
        if not uvicorn.exists():
            raise ServerError(f"{uvicorn} is missing")
        argv = [str(uvicorn), "naive_fastapi:app", "--app-dir", str(BENCH / "reference")]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        return Launch(argv)
    if target == "ws-service":
        env = ws_service_env(port, workers=workers, broker_url=broker_url)
        query = f"api_key={API_KEY}"
        gunicorn = VENV_BIN / "gunicorn"
        conf = ROOT / "config" / "gunicorn.conf.py"
        if workers > 1 and gunicorn.exists() and conf.exists():
            argv = [str(gunicorn), "-c", str(conf), "service.app:app"]
            return Launch(argv, env=env, ready_path="/healthz", query=query)
        cli = VENV_BIN / "ws-service"
        if not cli.exists():
            raise ServerError(f"ws-service is not installed ({cli} is missing)")
        return Launch([str(cli), "serve"], env=env, ready_path="/healthz", query=query)
    raise ValueError(f"unknown target {target!r}")


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group we created for proc, then SIGKILL it after `grace` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # Workers of a stopped master, if any, are still in the group.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


class Server:
    """One running server process tree, pinned to `cores`."""

    def __init__(
        self,
        target: str,
        *,
        cores: str,
        log_dir: Path,
        tag: str,
        workers: int = 1,
        broker_url: str = "memory://",
        extra_roots: tuple[int, ...] = (),
    ) -> None:
        self.target = target
        self.port = free_port()
        self.launch = launch_for(target, self.port, workers=workers, broker_url=broker_url)
        self.cores = cores
        self.log_path = log_dir / f"{tag}-{target}.log"
        self.extra_roots = extra_roots
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def roots(self) -> tuple[int, ...]:
        return (self.pid, *self.extra_roots)

    def sample(self) -> procfs.TreeSample:
        return procfs.sample(*self.roots())

    def url(self, path: str) -> str:
        query = f"?{self.launch.query}" if self.launch.query else ""
        return f"ws://127.0.0.1:{self.port}{path}{query}"

    def start(self, timeout: float = 30.0) -> None:
        env = base_env()
        env.update(self.launch.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                ["taskset", "-c", self.cores, *self.launch.argv],
                cwd=self.launch.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.target} exited with {self.proc.returncode} before it was ready: "
                    f"{_tail(self.log_path)}"
                )
            try:
                status, _ = http_get(self.port, self.launch.ready_path, timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise ServerError(
            f"{self.target} not ready on port {self.port} after {timeout:.0f} s: "
            f"{_tail(self.log_path)}"
        )

    def health(self) -> dict[str, object] | None:
        """The /healthz JSON of whichever worker answers (ws-service only)."""
        if self.launch.ready_path != "/healthz":
            return None
        try:
            status, body = http_get(self.port, "/healthz")
            return json.loads(body) if status == 200 else None
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, grace=10.0)

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Redis:
    """A throwaway redis-server on a free port, no persistence, pinned to `cores`."""

    def __init__(self, *, cores: str, log_dir: Path) -> None:
        self.cores = cores
        self.port = free_port()
        self.log_path = log_dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise ServerError("redis-server is not installed")
        self._dir = tempfile.TemporaryDirectory(prefix="ws-bench-redis-")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", self._dir.name, "--loglevel", "warning"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                ["taskset", "-c", self.cores, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"redis-server exited: {_tail(self.log_path)}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise ServerError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, grace=5.0)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Redis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
