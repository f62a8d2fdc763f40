"""Logs, metrics and traces around the engine: the engine exposes plain stats and a finish
hook; this package turns them into Prometheus metrics, log lines and (optional) spans."""
