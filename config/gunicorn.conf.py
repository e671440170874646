"""gunicorn -c config/gunicorn.conf.py service.app:app

Every setting comes from the WS_* environment through service.gunicorn_conf, which is also
what `ws-service serve` uses with WS_WORKERS > 1. Edit the environment, not this file.
"""

from service.gunicorn_conf import *  # noqa: F403
