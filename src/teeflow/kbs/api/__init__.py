"""HTTP adapter of the KBS: :mod:`.app` (FastAPI routes, :func:`~teeflow.kbs.api.app.create_app`),
:mod:`.errors` (RFC 7807 mapping), :mod:`.problems` (the problem catalog) and :mod:`.server`
(uvicorn with TLS; ``teeflow kbs serve``).

See ``docs/kbs.md`` for the routes and the error catalog. This package re-exports nothing.
"""

from __future__ import annotations

__all__: list[str] = []
