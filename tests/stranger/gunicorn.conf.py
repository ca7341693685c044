# The stranger's gunicorn.conf.py, as docs/extension.md shows it.
import os

from flask_tidings.gunicorn import *  # noqa: F403 - on_starting, post_worker_init, child_exit, on_exit

worker_class = "flask_tidings.gunicorn.StreamWorker"
bind = "127.0.0.1:" + os.environ.get("PORT", "5000")
