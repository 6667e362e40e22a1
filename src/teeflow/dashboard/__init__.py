"""``teeflow dashboard``: a party's read-only web view of its federation (``docs/dashboard.md``).

Above the service packages (it reads the KBS through :mod:`teeflow.kbs.client` and an
aggregator's progress document, :mod:`teeflow.fl.monitor`), beside :mod:`teeflow.demo`.
"""

__all__: list[str] = []
