"""The platform options every role command shares (``kbs serve``, ``aggregator run``,
``client run``, ``compute serve``): ``--platform``, ``--tsm-root``, ``--gramine-root``, and
the workload roles' ``--gpu`` (:data:`GpuOption`, :func:`teeflow.platform.nvidia.gpu_attester_for`).

A role declares the three parameters with these annotated types and turns them into a
:class:`~teeflow.platform.selection.PlatformOptions` with :func:`platform_options`; the role
builds its attester from it (:func:`teeflow.platform.attester_for`). The lean FL entry points
(:mod:`teeflow.fl.entry`) declare the same options with argparse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from teeflow.errors import PlatformError
from teeflow.platform.selection import PLATFORM_NAMES, PlatformOptions, check_platform_name

__all__ = [
    "GpuOption",
    "GramineRootOption",
    "PlatformOption",
    "TsmRootOption",
    "platform_options",
    "warn_if_emulated",
]


def _check(value: str) -> str:
    try:
        return check_platform_name(value)
    except PlatformError as exc:
        raise typer.BadParameter(str(exc)) from None


PlatformOption = Annotated[
    str,
    typer.Option(
        "--platform",
        help=(
            f"TEE platform: {' | '.join(PLATFORM_NAMES)}. 'auto' uses the TEE found "
            "(Gramine /dev/attestation, configfs-tsm) and fails without one; emulated-* are "
            "software TEEs for development (NO hardware protection)."
        ),
        callback=_check,
    ),
]
GpuOption = Annotated[
    str,
    typer.Option(
        "--gpu",
        help=(
            "GPU attester: none, nvml (NVIDIA CC GPUs through NVML; extra 'gpu'), "
            "emulated-hopper or emulated-blackwell (EMULATED, test only)."
        ),
    ),
]
TsmRootOption = Annotated[
    Path | None,
    typer.Option(
        "--tsm-root",
        help="configfs-tsm report directory (default /sys/kernel/config/tsm/report).",
    ),
]
GramineRootOption = Annotated[
    Path | None,
    typer.Option(
        "--gramine-root", help="Gramine attestation directory (default /dev/attestation)."
    ),
]


def platform_options(
    platform: str, tsm_root: Path | None, gramine_root: Path | None
) -> PlatformOptions:
    """The role's :class:`PlatformOptions` (``platform`` already checked by the option).

    Raises:
        PlatformError: unknown platform name.
    """
    return PlatformOptions(platform, tsm_root=tsm_root, gramine_root=gramine_root)


def warn_if_emulated(options: PlatformOptions) -> None:
    """Say on stderr that an emulated platform gives no hardware protection."""
    if options.emulated:
        typer.secho(
            f"  platform {options.platform}: software TEE, NO hardware protection",
            fg=typer.colors.YELLOW,
            err=True,
        )
