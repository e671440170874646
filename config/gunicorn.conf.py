"""gunicorn -c config/gunicorn.conf.py service.app:app

Every setting comes from the WS_* environment (and WS_ENV_FILE) through
service/gunicorn_conf.py, where each one is explained. Edit the environment, not this file.

On SIGHUP (`systemctl reload ws`, `supervisorctl signal HUP ws`) gunicorn runs this file
again in the master, then starts new workers and drains the old ones. The master has imported
part of the `service` package (settings, worker class, logging), and new workers are forked
from it: left alone they would run that old code mixed with newly installed modules. So a
reload forgets every `service` module first and the new workers run the installed release
and settings, whole. If the new release or settings fail to load, the running ones stay and
the reason is printed: a bad reload never takes the master down.
"""

import sys
import traceback


def _service_modules() -> dict:
    return {n: m for n, m in sys.modules.items() if n == "service" or n.startswith("service.")}


_running = _service_modules()
for _name in _running:
    del sys.modules[_name]
try:
    from service.gunicorn_conf import *  # noqa: F403
except (Exception, SystemExit) as _exc:
    if not _running:
        raise  # first start: exit, the problems printed
    if not isinstance(_exc, SystemExit):  # a SystemExit has printed its problems already
        traceback.print_exc()
    for _name in _service_modules():
        del sys.modules[_name]
    sys.modules.update(_running)
    from service.gunicorn_conf import *  # noqa: F403

    print(
        "ws-service: reload kept the running code and settings; fix the problem above, "
        "then reload again",
        file=sys.stderr,
    )
