"""Operational metrics shared by every teeflow service (issue 14; ``docs/metrics.md``).

A low-level package (it imports no other teeflow package): the KBS, the FL aggregator, the
compute worker and the serving workload build their Prometheus metrics from
:mod:`teeflow.observability.metrics` and expose them with :mod:`teeflow.observability.http`.
"""

__all__: list[str] = []
