# gunicorn -c gunicorn.conf.py minimal:app — Flask-Tidings' worker class and its hooks.
import os

from flask_tidings.gunicorn import child_exit, on_exit, post_worker_init  # noqa: F401

worker_class = "flask_tidings.gunicorn.StreamWorker"
bind = "127.0.0.1:" + os.environ.get("PORT", "5000")
