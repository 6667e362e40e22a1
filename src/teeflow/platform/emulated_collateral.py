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

Shared with the TDX emulator (:mod:`teeflow.platform.emulated_tdx`): :func:`pcs_timestamp`,
:func:`sign_pcs_document`, :func:`tcb_info_document`, :func:`qe_identity_document` and
:func:`collateral_from_files`.
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

from teeflow.attestation.dcap.collateral import COLLATERAL_FILES as DCAP_COLLATERAL_FILES
from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.errors import PlatformError
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
    sign_p256_raw,
)

__all__ = [
    "COLLATERAL_FILES",
    "COLLATERAL_VALIDITY",
    "QE_ATTRIBUTES",
    "QE_ATTRIBUTES_MASK",
    "TCB_EVALUATION_DATA_NUMBER",
    "CollateralFiles",
    "collateral_from_files",
    "make_collateral_files",
    "pcs_timestamp",
    "qe_identity_document",
    "read_collateral_dir",
    "sign_pcs_document",
    "tcb_info_document",
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
#: File names of a collateral directory: the ``IntelCollateral.from_dir`` layout without the
#: optional QE Identity issuer chain (the TCB Info chain also covers the QE Identity).
COLLATERAL_FILES = tuple(n for n in DCAP_COLLATERAL_FILES if n != "qe_identity_issuer_chain.pem")


@dataclass(frozen=True)
class CollateralFiles:
    """One emulated collateral set as file bytes, with its validity window (UTC)."""

    files: Mapping[str, bytes]
    issue_date: datetime
    next_update: datetime

    def fresh_at(self, now: datetime) -> bool:
        """True if usable at ``now``: issued before it, expiring more than a day later."""
        return self.issue_date <= now and now + REFRESH_MARGIN < self.next_update


def pcs_timestamp(t: datetime) -> str:
    """``YYYY-MM-DDThh:mm:ssZ`` (UTC, seconds), the date format of Intel PCS documents."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_pcs_document(
    outer: str, inner: dict[str, object], key: ec.EllipticCurvePrivateKey
) -> bytes:
    """``{"<outer>":<inner>,"signature":"<hex r||s>"}`` signed (ECDSA P-256 SHA-256) over the
    exact bytes of ``<inner>`` as written (compact JSON), as Intel PCS signs TCB Info and
    Enclave Identity."""
    inner_bytes = json.dumps(inner, separators=(",", ":")).encode()
    sig = sign_p256_raw(key, inner_bytes).hex()
    return b'{"' + outer.encode() + b'":' + inner_bytes + b',"signature":"' + sig.encode() + b'"}'


def collateral_from_files(collateral: CollateralFiles, *, source: str) -> IntelCollateral:
    """Parse an emulated collateral set with the shared parsers
    (:meth:`~teeflow.attestation.dcap.collateral.IntelCollateral.from_bytes`).

    Raises:
        ParseError: a document is malformed (never for sets made here).
    """
    f = collateral.files
    return IntelCollateral.from_bytes(
        tcb_info=f["tcb_info.json"],
        qe_identity=f["qe_identity.json"],
        pck_crl=f["pck_crl.der"],
        root_ca_crl=f["root_ca_crl.der"],
        pck_crl_issuer_chain=f["pck_crl_issuer_chain.pem"],
        tcb_info_issuer_chain=f["tcb_info_issuer_chain.pem"],
        source=source,
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


def tcb_info_document(
    tee_id: str,
    issue: datetime,
    nxt: datetime,
    tcb_date: str,
    *,
    status: str = "UpToDate",
    extra_tcb: Mapping[str, object] | None = None,
    extra_fields: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The inner ``tcbInfo`` object (TCB Info v3) of the emulated platform, with one TCB
    level: the emulated SGX components and PCESVN (plus ``extra_tcb``, e.g. TDX's
    ``tdxtcbcomponents``) at ``status``, dated ``tcb_date``; ``extra_fields`` (e.g.
    ``tdxModule``) go before ``tcbLevels``."""
    tcb: dict[str, object] = {
        "sgxtcbcomponents": [{"svn": c} for c in EMULATED_TCB_COMPONENTS],
        "pcesvn": EMULATED_PCESVN,
        **(extra_tcb or {}),
    }
    return {
        "id": tee_id,
        "version": 3,
        "issueDate": pcs_timestamp(issue),
        "nextUpdate": pcs_timestamp(nxt),
        "fmspc": EMULATED_FMSPC.hex().upper(),
        "pceId": EMULATED_PCE_ID.hex().upper(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
        **(extra_fields or {}),
        "tcbLevels": [{"tcb": tcb, "tcbDate": tcb_date, "tcbStatus": status}],
    }


def qe_identity_document(
    qe_id: str, isvprodid: int, issue: datetime, nxt: datetime, tcb_date: str
) -> dict[str, object]:
    """The inner ``enclaveIdentity`` object (Enclave Identity v2) of the emulated QE
    (``qe_id`` ``"QE"`` or ``"TD_QE"``): one ``UpToDate`` level at its ISVSVN."""
    return {
        "id": qe_id,
        "version": 2,
        "issueDate": pcs_timestamp(issue),
        "nextUpdate": pcs_timestamp(nxt),
        "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
        "miscselect": QE_MISCSELECT.to_bytes(4, "big").hex().upper(),
        "miscselectMask": "FFFFFFFF",
        "attributes": QE_ATTRIBUTES.hex().upper(),
        "attributesMask": QE_ATTRIBUTES_MASK.hex().upper(),
        "mrsigner": EMULATED_QE_MRSIGNER.hex().upper(),
        "isvprodid": isvprodid,
        "tcbLevels": [
            {"tcb": {"isvsvn": EMULATED_QE_ISVSVN}, "tcbDate": tcb_date, "tcbStatus": "UpToDate"}
        ],
    }


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
    tcb_date = pcs_timestamp(keys.root_ca.not_valid_before_utc)
    tcb_info = tcb_info_document("SGX", issue, nxt, tcb_date)
    qe_identity = qe_identity_document("QE", EMULATED_QE_ISVPRODID, issue, nxt, tcb_date)
    files = {
        "tcb_info.json": sign_pcs_document("tcbInfo", tcb_info, keys.tcb_signing_key),
        "qe_identity.json": sign_pcs_document("enclaveIdentity", qe_identity, keys.tcb_signing_key),
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
