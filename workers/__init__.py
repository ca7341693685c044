"""Background jobs run by RQ workers (``python -m workers``)."""
