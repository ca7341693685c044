"""The app behind OpenTelemetry's WSGI middleware, with a real tracer provider and no exporter."""

from opentelemetry import trace
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider

from app import create_app

trace.set_tracer_provider(TracerProvider())
app = create_app()
app.wsgi_app = OpenTelemetryMiddleware(app.wsgi_app)
