"""How an attester tells that its interface is a teeflow stand-in (``teeflow emulate tsm`` /
``teeflow emulate gramine``), so that it declares its evidence as what it is.

A stand-in serves the kernel's configfs-tsm tree or Gramine's ``/dev/attestation`` with
evidence signed under the local emulation root. The KBS appraises such evidence as
``emulated-tdx`` / ``emulated-snp`` / ``emulated-sgx`` and refuses a session that declared
``tdx`` / ``snp`` / ``sgx`` for it (the declared TEE must equal the appraised one), so the
attester must declare the emulated name *before* it has evidence (RCAR sends ``tee`` in the
first message). Every stand-in mount has a read-only root file :data:`STANDIN_MARKER`
(JSON, ``"emulated": true``); the real configfs-tsm report directory and Gramine's
``/dev/attestation`` never contain it.

The label is a declaration, not a security decision: the KBS decides from the evidence's
certificate chain, and evidence chaining to an emulation root is accepted only under an
agreement's ``allow_emulated``. A marker on real hardware would only make the KBS refuse
the (then mislabelled) hardware evidence.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["STANDIN_MARKER", "declared_tee", "is_standin"]

#: Root file of every stand-in mount.
STANDIN_MARKER = ".teeflow-standin"


def is_standin(root: Path) -> bool:
    """Whether ``root`` (a configfs-tsm report dir or ``/dev/attestation``) is a stand-in.
    Never raises (an unreadable root is not a stand-in)."""
    try:
        return (Path(root) / STANDIN_MARKER).is_file()
    except OSError:
        return False


def declared_tee(root: Path, tee: str) -> str:
    """``emulated-<tee>`` when ``root`` is a stand-in, else ``tee`` (``sgx``/``tdx``/``snp``)."""
    return f"emulated-{tee}" if is_standin(root) else tee
