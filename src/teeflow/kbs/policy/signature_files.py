"""Agreement signature files: ``FILE.sigs.json`` beside an agreement YAML.

Format::

    {"format": "teeflow-agreement-signatures-v1", "federation": "study", "version": 1,
     "digest": "<64 hex: agreement digest>", "signatures": {"hospital-a": "<b64url>", ...}}

``digest`` records what was signed: when the YAML changes meaning, its digest changes and the
old signatures are stale (``load_signed`` refuses them). Used by ``teeflow agreement`` and by
programs that script agreements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from pydantic import Field

from teeflow.attestation.policy import Hex32, load_policy_document
from teeflow.errors import VerificationError
from teeflow.kbs.policy.agreement import MAX_ITEMS, FederationAgreement, digest
from teeflow.kbs.policy.canonical import DocumentModel, validate_document
from teeflow.kbs.policy.parties import B64Sig64, Name
from teeflow.kbs.policy.signing import SignedAgreement

__all__ = [
    "SIGNATURES_FORMAT",
    "SignatureFile",
    "load_signatures",
    "load_signed",
    "signature_path",
]

SIGNATURES_FORMAT: Final = "teeflow-agreement-signatures-v1"


class SignatureFile(DocumentModel):
    """The ``FILE.sigs.json`` document (see the module docstring)."""

    format: Literal["teeflow-agreement-signatures-v1"] = SIGNATURES_FORMAT
    federation: Name
    version: int = Field(ge=1)
    digest: Hex32
    signatures: dict[Name, B64Sig64] = Field(default_factory=dict, max_length=MAX_ITEMS)


def signature_path(agreement_path: Path) -> Path:
    """``<agreement_path>.sigs.json``."""
    return agreement_path.with_name(agreement_path.name + ".sigs.json")


def load_signatures(path: Path) -> SignatureFile | None:
    """Read a signature file; None when it does not exist.

    Raises:
        ParseError: unreadable, malformed or invalid.
    """
    if not path.exists():
        return None
    return validate_document(SignatureFile, load_policy_document(path), "signature file")


def load_signed(agreement_path: Path, sigs_path: Path | None = None) -> SignedAgreement:
    """The agreement with the signatures of its signature file (none if the file is absent).

    Raises:
        ParseError: agreement or signature file invalid.
        VerificationError: the signature file is for another digest (stale signatures).
    """
    agreement = FederationAgreement.load(agreement_path)
    sigs = load_signatures(sigs_path or signature_path(agreement_path))
    if sigs is None:
        return SignedAgreement(agreement=agreement)
    if sigs.digest != digest(agreement).hex():
        raise VerificationError("signature file is for another version of the agreement (stale)")
    return SignedAgreement(agreement=agreement, signatures=sigs.signatures)
