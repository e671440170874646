"""deploy/supervisor/ws.conf run by the venv's supervisord, as ops would run it.

Only paths, the port and the user are rewritten for a temp folder; every other line is the
shipped file's.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from service.settings import Settings
from tests.support import BIN, ROOT, base_env, free_port, get_json, scaled, wait_until

SHIPPED = ROOT / "deploy/supervisor/ws.conf"
DEFAULT_GRACEFUL_TIMEOUT = Settings.model_fields["graceful_timeout"].default


class Supervisor:
    """A private supervisord with the shipped program section, driven by supervisorctl."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.log = tmp / "ws.log"
        self.config = tmp / "supervisord.conf"
        env_file = tmp / "ws.env"
        env_file.write_text(
            f"WS_PORT={self.port}\nWS_GRACEFUL_TIMEOUT=10\nWS_DRAIN_SPREAD=0.5\nWS_LOG_LEVEL=info\n"
        )
        program = SHIPPED.read_text()
        for old, new in {
            "/opt/ws/venv/bin/": f"{BIN}/",
            "/opt/ws/config/": f"{ROOT}/config/",
            "directory=/opt/ws": f"directory={ROOT}",
            'HOME="/opt/ws"': f'HOME="{tmp}"',
            "/etc/ws/ws.env": str(env_file),
            "/var/log/ws/ws.log": str(self.log),
            "user=ws": f"user={getpass.getuser()}",
        }.items():
            assert old in program, f"{SHIPPED} no longer contains {old!r}"
            program = program.replace(old, new)
        (tmp / "ws.conf").write_text(program)
        self.config.write_text(
            f"""[supervisord]
nodaemon=true
logfile={tmp}/supervisord.log
pidfile={tmp}/supervisord.pid
childlogdir={tmp}

[unix_http_server]
file={tmp}/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{tmp}/supervisor.sock

[include]
files = {tmp}/ws.conf
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "supervisord"), "-c", str(self.config)],
            env=base_env({}),
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(lambda: "ws" in self.ctl("status", check=False), 10, what="supervisord")

    def ctl(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=scaled(30),
            env=base_env({}),
        )
        if check and result.returncode != 0:
            raise AssertionError(f"supervisorctl {' '.join(args)}: {result.stdout}{result.stderr}")
        return result.stdout

    def master_pid(self) -> int:
        return int(self.ctl("pid", "ws").strip())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # supervisord stops ws first, then itself
        try:
            self.proc.wait(scaled(30))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    sup = Supervisor(tmp_path)
    sup.start()
    try:
        yield sup
    finally:
        sup.stop()


def healthy_pid(url: str) -> int:
    status, body = get_json(url + "/healthz")
    assert status == 200
    return int(body["pid"])


async def close_code(ws: ClientConnection) -> int | None:
    try:
        async with asyncio.timeout(scaled(15)):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


async def test_supervisor_keeps_ws_running_reloads_and_stops_it_gracefully(
    supervisor: Supervisor,
) -> None:
    """autostart; kill -9 master -> back; signal HUP -> new worker; stop -> 1012; start again."""
    # autostart=true: supervisord started it without being asked.
    first_worker = await asyncio.to_thread(
        wait_until, lambda: healthy_pid(supervisor.url), 15, 0.1, "ws to start"
    )
    ws_url = f"ws://127.0.0.1:{supervisor.port}/ws"

    # kill -9 of the master: supervisor starts a new one; the orphaned worker drains its
    # clients (1012) instead of holding the port.
    orphan_client = await connect(ws_url)
    master = supervisor.master_pid()
    os.kill(master, signal.SIGKILL)
    assert await close_code(orphan_client) in (1001, 1012)

    def restarted() -> bool:
        return supervisor.master_pid() not in (0, master) and healthy_pid(supervisor.url) > 0

    await asyncio.to_thread(wait_until, restarted, 20, 0.2, "supervisor to restart ws")
    assert healthy_pid(supervisor.url) != first_worker

    # Zero-downtime reload through supervisor: new worker pid, same master.
    master = supervisor.master_pid()
    worker = healthy_pid(supervisor.url)
    await asyncio.to_thread(supervisor.ctl, "signal", "HUP", "ws")
    await asyncio.to_thread(
        wait_until, lambda: healthy_pid(supervisor.url) != worker, 15, 0.1, "a new worker"
    )
    assert supervisor.master_pid() == master

    # Graceful stop: every connected client gets a close frame.
    clients = [await connect(ws_url) for _ in range(20)]
    stopping = asyncio.create_task(asyncio.to_thread(supervisor.ctl, "stop", "ws"))
    codes = await asyncio.gather(*(close_code(ws) for ws in clients))
    assert "ws: stopped" in await stopping
    assert set(codes) <= {1001, 1012}, codes
    assert "STOPPED" in supervisor.ctl("status", "ws", check=False)

    assert "ws: started" in await asyncio.to_thread(supervisor.ctl, "start", "ws")
    assert healthy_pid(supervisor.url) > 0

    # The log file supervisor writes holds the hooks' lines, one handler, no duplicates.
    log = supervisor.log.read_text()
    assert "worker booted" in log
    assert log.count("Listening at:") == 3  # autostart, after kill -9, `start`


def test_program_section_keeps_the_stop_chain() -> None:
    """stopwaitsecs outlasts WS_GRACEFUL_TIMEOUT; TERM to the group; autorestart; rotation."""
    program = dict(
        line.split("=", 1)
        for line in SHIPPED.read_text().splitlines()
        if "=" in line and not line.startswith(";")
    )
    assert int(program["stopwaitsecs"]) > DEFAULT_GRACEFUL_TIMEOUT
    assert program["stopsignal"] == "TERM"
    assert program["stopasgroup"] == program["killasgroup"] == "true"
    assert program["autostart"] == program["autorestart"] == "true"
    assert program["user"] == "ws"
    assert program["stdout_logfile_backups"] != "0"
