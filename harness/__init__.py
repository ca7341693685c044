"""The process harness the tests and the benchmarks share.

``harness.tools`` finds the programs a run needs (and says how to get a missing one),
``harness.servers`` starts real processes (redis-server, a Redis Cluster, PostgreSQL, gunicorn,
the RQ worker, nginx, test hosts in network namespaces), ``harness.clients`` drives them like a
browser does (form posts with CSRF tokens, EventSource-like streams and tabs).
"""
