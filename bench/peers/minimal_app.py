"""The floor: a bare WSGI stream (no Flask, no Redis) under the same gunicorn settings.

What gunicorn's gevent worker alone costs per idle connection, to read the others against.
"""

import gevent.event


def app(environ, start_response):
    """``/stream`` holds the connection with a keepalive every 15 s; anything else is 404."""
    if environ.get("PATH_INFO") != "/stream":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
    idle = gevent.event.Event()

    def body():
        yield b"retry: 3000\n\n: connected\n\n"
        while True:
            idle.wait(15)
            yield b": keepalive\n\n"

    return body()
