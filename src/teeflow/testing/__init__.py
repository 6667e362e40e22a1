"""Importable test kit (emulation roots, evidence factory). Never imported by teeflow itself.

See :mod:`teeflow.testing.evidence`.
"""

from __future__ import annotations

__all__: list[str] = []
