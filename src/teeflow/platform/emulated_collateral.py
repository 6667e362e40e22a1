"""Emulated Intel DCAP collateral (Endorsements) signed by the emulation authority.

Produces the same documents Intel PCS serves, in the same shapes, so the shared verifier
checks them unchanged (Intel "SGX and TDX PCS API": TCB Info v3 for SGX, Enclave Identity
v2 for the QE; Intel "PCK Certificate and CRL Profile Specification" for CRLs):

* ``tcb_info.json`` — ``{"tcbInfo":{...},"signature":"<hex r||s>"}``; ``id`` ``"SGX"``,
  ``version`` 3, FMSPC / PCE-ID of the emulated PCK certificate, one ``UpToDate`` level
  equal to the emulated TCB; signed ECDSA-P256-SHA256 by the emulated TCB signing key over
  the exact bytes of the ``tcbInfo`` value as written in the file;
* ``qe_identity.json`` — ``{"enclaveIdentity":{...},"signature":...}``, ``id`` ``"QE"``,
  ``version`` 2, MRSIGNER / ISVPRODID of the emulated QE, one ``UpToDate`` level at its
  ISVSVN;
* ``pck_crl.der`` (empty, by the emulated PCK Platform CA) and ``root_ca_crl.der`` (empty,
  by the emulation root);
* ``tcb_info_issuer_chain.pem`` (TCB signing, root) and ``pck_crl_issuer_chain.pem``
  (PCK CA, root) — the layout of ``../shared/testdata/attestation/sgx/collateral/*``.

Every document is valid from its issue time for :data:`COLLATERAL_VALIDITY` (30 days).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from teeflow.errors import PlatformError
from teeflow.hazmat.ecdsa import der_to_raw_signature
from teeflow.platform.emulated_authority import (
    EMULATED_FMSPC,
    EMULATED_PCE_ID,
    EMULATED_PCESVN,
    EMULATED_QE_ISVPRODID,
    EMULATED_QE_ISVSVN,
    EMULATED_QE_MRSIGNER,
    EMULATED_TCB_COMPONENTS,
    AuthorityKeys,
    atomic_write,
)

__all__ = [
    "COLLATERAL_FILES",
    "COLLATERAL_VALIDITY",
    "QE_ATTRIBUTES",
    "QE_ATTRIBUTES_MASK",
    "TCB_EVALUATION_DATA_NUMBER",
    "CollateralFiles",
    "make_collateral_files",
    "read_collateral_dir",
    "write_collateral_files",
]

#: Validity of emulated TCB Info, QE Identity and CRLs.
COLLATERAL_VALIDITY = timedelta(days=30)
#: Regenerate when less than this is left (so a quote made now still verifies shortly after).
REFRESH_MARGIN = timedelta(days=1)
TCB_EVALUATION_DATA_NUMBER = 17
#: QE report ATTRIBUTES (flags INIT|PROVISIONKEY, xfrm 0xe7) and the QE Identity mask.
QE_ATTRIBUTES = (0x11).to_bytes(8, "little") + (0xE7).to_bytes(8, "little")
QE_ATTRIBUTES_MASK = bytes.fromhex("FBFFFFFFFFFFFFFF0000000000000000")
QE_MISCSELECT = 0
#: File names of a collateral directory (``IntelCollateral.from_dir`` layout).
COLLATERAL_FILES = (
    "tcb_info.json",
    "qe_identity.json",
    "pck_crl.der",
    "root_ca_crl.der",
    "tcb_info_issuer_chain.pem",
    "pck_crl_issuer_chain.pem",
)


@dataclass(frozen=True)
class CollateralFiles:
    """One emulated collateral set as file bytes, with its validity window (UTC)."""

    files: Mapping[str, bytes]
    issue_date: datetime
    next_update: datetime

    def fresh_at(self, now: datetime) -> bool:
        """True if usable at ``now``: issued before it, expiring more than a day later."""
        return self.issue_date <= now and now + REFRESH_MARGIN < self.next_update


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sign_document(
    outer_key: str, inner: dict[str, object], key: ec.EllipticCurvePrivateKey
) -> bytes:
    """``{"<outer_key>":<inner>,"signature":"<hex r||s>"}`` signed over the inner bytes."""
    inner_bytes = json.dumps(inner, separators=(",", ":")).encode()
    der = key.sign(inner_bytes, ec.ECDSA(hashes.SHA256()))
    sig_hex = der_to_raw_signature(der).hex()
    return (
        b'{"'
        + outer_key.encode()
        + b'":'
        + inner_bytes
        + b',"signature":"'
        + sig_hex.encode()
        + b'"}'
    )


def _crl(
    issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, issue: datetime, nxt: datetime
) -> bytes:
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(issue)
        .next_update(nxt)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.DER)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def make_collateral_files(keys: AuthorityKeys, now: datetime) -> CollateralFiles:
    """Generate and sign a collateral set issued at ``now`` (seconds precision).

    Raises:
        PlatformError: ``now`` is naive, or outside the authority certificates' validity.
    """
    if now.tzinfo is None:
        raise PlatformError("'now' must be timezone-aware")
    issue = now.astimezone(UTC).replace(microsecond=0)
    nxt = issue + COLLATERAL_VALIDITY
    for cert in (keys.root_ca, keys.tcb_signing, keys.pck_ca):
        if not cert.not_valid_before_utc <= issue <= cert.not_valid_after_utc:
            raise PlatformError(
                f"emulation certificate {cert.subject.rfc4514_string()!r} is not valid at "
                f"{issue.isoformat()}"
            )
    # A level is valid from the date the emulated TCB was "released": the root's start.
    tcb_date = _ts(keys.root_ca.not_valid_before_utc)
    tcb_info = {
        "id": "SGX",
        "version": 3,
        "issueDate": _ts(issue),
        "nextUpdate": _ts(nxt),
        "fmspc": EMULATED_FMSPC.hex().upper(),
        "pceId": EMULATED_PCE_ID.hex().upper(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
        "tcbLevels": [
            {
                "tcb": {
                    "sgxtcbcomponents": [{"svn": c} for c in EMULATED_TCB_COMPONENTS],
                    "pcesvn": EMULATED_PCESVN,
                },
                "tcbDate": tcb_date,
                "tcbStatus": "UpToDate",
            }
        ],
    }
    qe_identity = {
        "id": "QE",
        "version": 2,
        "issueDate": _ts(issue),
        "nextUpdate": _ts(nxt),
        "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
        "miscselect": QE_MISCSELECT.to_bytes(4, "big").hex().upper(),
        "miscselectMask": "FFFFFFFF",
        "attributes": QE_ATTRIBUTES.hex().upper(),
        "attributesMask": QE_ATTRIBUTES_MASK.hex().upper(),
        "mrsigner": EMULATED_QE_MRSIGNER.hex().upper(),
        "isvprodid": EMULATED_QE_ISVPRODID,
        "tcbLevels": [
            {"tcb": {"isvsvn": EMULATED_QE_ISVSVN}, "tcbDate": tcb_date, "tcbStatus": "UpToDate"}
        ],
    }
    files = {
        "tcb_info.json": _sign_document("tcbInfo", tcb_info, keys.tcb_signing_key),
        "qe_identity.json": _sign_document("enclaveIdentity", qe_identity, keys.tcb_signing_key),
        "pck_crl.der": _crl(keys.pck_ca, keys.pck_ca_key, issue, nxt),
        "root_ca_crl.der": _crl(keys.root_ca, keys.root_ca_key, issue, nxt),
        "tcb_info_issuer_chain.pem": _pem(keys.tcb_signing, keys.root_ca),
        "pck_crl_issuer_chain.pem": _pem(keys.pck_ca, keys.root_ca),
    }
    return CollateralFiles(files=files, issue_date=issue, next_update=nxt)


def write_collateral_files(
    collateral: CollateralFiles, directory: Path, *, private: bool = True
) -> None:
    """Write the six files into ``directory``, each atomically.

    ``private`` (the emulation directory): directory created 0700, files 0600; otherwise
    (an exported copy of public collateral) default directory mode and 0644 files.

    ``tcb_info.json`` is written last so a reader never sees new CRLs with an old
    TCB Info window for long. Raises ``PlatformError`` on I/O errors.
    """
    try:
        if private:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        else:
            directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlatformError(f"cannot create {directory}: {exc.strerror}") from None
    for name in sorted(collateral.files, key=lambda n: n == "tcb_info.json"):
        atomic_write(directory / name, collateral.files[name], 0o600 if private else 0o644)


def read_collateral_dir(directory: Path) -> CollateralFiles | None:
    """Read a collateral directory written by :func:`write_collateral_files`.

    Returns ``None`` when a file is missing or the TCB Info cannot be read (the caller
    regenerates); the signatures are not checked here (the verifier does that).
    """
    try:
        files = {name: (directory / name).read_bytes() for name in COLLATERAL_FILES}
        inner = json.loads(files["tcb_info.json"])["tcbInfo"]
        issue = datetime.strptime(inner["issueDate"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        nxt = datetime.strptime(inner["nextUpdate"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return CollateralFiles(files=files, issue_date=issue, next_update=nxt)
