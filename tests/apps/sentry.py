"""The app under sentry-sdk's Flask integration, tracing every request, with a DSN that points nowhere."""

import sentry_sdk
from sentry_sdk.integrations.flask import FlaskIntegration

from app import create_app

# Port 9 (discard) on loopback: nothing listens, so nothing leaves the machine.
sentry_sdk.init(dsn="http://key@127.0.0.1:9/1", integrations=[FlaskIntegration()], traces_sample_rate=1.0)
app = create_app()
