"""The peer: Flask-SSE (PyPI) serving the same events, as its documentation sets it up.

``gunicorn -c gunicorn.conf.py bench.peers.flask_sse_app:app`` with the same settings as
Tidings. The channel comes from ``?channel=`` (Flask-SSE's design) and every stream opens its
own Redis pub/sub connection.
"""

import os

from flask import Flask
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ["REDIS_URL"]
app.register_blueprint(sse, url_prefix="/stream")
