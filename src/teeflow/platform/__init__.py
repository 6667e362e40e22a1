"""Attester side: where a workload runs and how it gets evidence.

:func:`attester_for` (``--platform`` of every role) builds the one
:class:`~teeflow.platform.base.Attester` of a process: Gramine-SGX, TDX or SEV-SNP through
configfs-tsm, or — only when named — an emulated platform. :func:`detect_platform` finds the
hardware interface and fails when there is none. Both are defined in
:mod:`teeflow.platform.base` / :mod:`teeflow.platform.selection` and named here because the
issue's interface is ``teeflow.platform.attester_for``; the emulated attesters are imported
from their own modules (never from this package).
"""

from __future__ import annotations

from teeflow.platform.base import Attester, detect_platform
from teeflow.platform.selection import PLATFORM_NAMES, PlatformOptions, attester_for

__all__ = ["PLATFORM_NAMES", "Attester", "PlatformOptions", "attester_for", "detect_platform"]
