"""The benchmark's scenarios, each ``fn(rig) -> dict`` registered by name (bench/harness.py).

Importing this package registers them all; ``ORDER`` is the order a full run takes them.
"""

from bench.scenarios import peers, scaleout, tidings  # noqa: F401 - registers the scenarios

ORDER = ["streams", "publish", "rate", "restart", "polling", "hold", "flask_sse", "floor", "scaleout"]
