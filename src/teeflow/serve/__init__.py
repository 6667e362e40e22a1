"""Confidential model serving: the attested Open Inference Protocol server (role ``serve``)
and its end-to-end encrypting client (issue 12)."""

from __future__ import annotations

__all__: list[str] = []
