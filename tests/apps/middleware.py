"""The app behind hand-written middleware: one that wraps every response iterable, and one that
fails right after ``/stream`` has taken its connection over."""

from werkzeug.wsgi import ClosingIterator

from app import create_app


class WrapEveryBody:
    """Returns its own iterable for every response, as most tracing middleware does."""

    def __init__(self, app):
        self.app = app
        self.closed = 0

    def __call__(self, environ, start_response):
        return ClosingIterator(self.app(environ, start_response), [self._closed])

    def _closed(self):
        self.closed += 1


class FailAfterStream:
    """Raises once the app returned a /stream response: a failure after the hand-over."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        body = self.app(environ, start_response)
        if environ.get("PATH_INFO") == "/stream":
            raise RuntimeError("injected failure after the hand-over")
        return body


wrapped = create_app()
wrapped.wsgi_app = WrapEveryBody(wrapped.wsgi_app)

failing = create_app()
failing.wsgi_app = FailAfterStream(failing.wsgi_app)
