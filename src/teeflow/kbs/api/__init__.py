"""HTTP adapter of the KBS (FastAPI): :func:`create_app` and the RFC 7807 error mapping.

See :mod:`teeflow.kbs.api.app` for the routes and ``docs/kbs.md`` for the error catalog.
"""

from __future__ import annotations

from teeflow.kbs.api.app import SESSION_COOKIE, create_app
from teeflow.kbs.api.errors import PROBLEM_MEDIA_TYPE, install_error_handlers

__all__ = ["PROBLEM_MEDIA_TYPE", "SESSION_COOKIE", "create_app", "install_error_handlers"]
