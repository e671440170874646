"""The Procfile, run by honcho as a Procfile platform would run it."""

from __future__ import annotations

import re
import signal

from tests.support import BIN, ROOT, ServerProcess, free_port, get_json

PROCFILE = ROOT / "Procfile"


def test_procfile_web_is_the_production_command() -> None:
    """`web:` runs the contract's command, nothing else."""
    processes = dict(re.findall(r"^([A-Za-z0-9_-]+):\s*(.+)$", PROCFILE.read_text(), re.M))
    assert processes == {"web": "gunicorn -c config/gunicorn.conf.py service.app:app"}


def test_honcho_starts_web_and_it_answers_on_port() -> None:
    """`honcho start web` sets $PORT (no WS_PORT anywhere): /healthz answers on it, stops clean."""
    port = free_port()
    argv = [str(BIN / "honcho"), "-d", str(ROOT), "-f", str(PROCFILE), "start", "-p", str(port)]
    honcho = ServerProcess({}, port=port, argv=[*argv, "web"])
    del honcho.env["WS_PORT"]  # only honcho's PORT says where to listen
    with honcho:
        status, body = get_json(honcho.http_url + "/healthz")
        assert status == 200 and body["status"] == "ok"
        honcho.stop(signal.SIGTERM)
        log = honcho.log_text()
    assert re.search(rf"web\.1 +\| .*Listening at: http://127\.0\.0\.1:{port}\b", log), log
    assert "Shutting down: Master" in log  # honcho's SIGTERM reached gunicorn: a clean stop
