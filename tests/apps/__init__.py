"""WSGI entry points wrapping the app the way real deployments do (for tests/integration/test_server.py)."""
