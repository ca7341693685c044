"""Benchmarks of Tidings against the seed's polling and Flask-SSE (``make bench``)."""
