"""X.509 certificate-chain and CRL checks for Intel DCAP endorsements.

Built on ``cryptography`` (no hand-rolled X.509): signatures are checked with
``Certificate.verify_directly_issued_by`` and ``CertificateRevocationList.is_signature_valid``.
The profile follows RFC 5280 section 6 (basic path validation, reduced to what Intel's
PKI needs) and Intel's "SGX PCK Certificate and Certificate Revocation List Profile
Specification": Intel SGX Root CA -> (PCK Platform CA | PCK Processor CA | TCB Signing)
-> PCK leaf, with the Root CA CRL covering the intermediates and the PCK CRLs covering
PCK leaves.

Trust decisions:

* a chain is trusted only if it terminates in one of the caller's :class:`TrustAnchor`
  objects -- either its last certificate *is* the anchor (same DER, or same subject and
  public key) or its last certificate is directly issued by the anchor. A self-signed
  root inside the chain is never trusted on its own;
* every certificate (and the anchor) must contain ``now`` in its validity window;
* every issuer must be a CA (BasicConstraints ``cA=TRUE``, path length respected, and
  ``keyCertSign`` when a KeyUsage extension is present).

Signature checks are memoised in a bounded process-wide cache keyed on
``(SHA-256(issuer DER), SHA-256(subject DER))`` because a verifier checks the same
Intel chain for every quote; validity windows and revocation are re-checked on every
call.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import CollateralError, ParseError, VerificationError

__all__ = [
    "MAX_CHAIN_LENGTH",
    "check_crl",
    "load_pem_chain",
    "verify_chain",
]

#: Longest chain (leaf first, root optional) :func:`verify_chain` accepts.
MAX_CHAIN_LENGTH = 8
#: Largest PEM chain :func:`load_pem_chain` reads, in bytes.
MAX_PEM_BYTES = 64 * 1024
_CACHE_LIMIT = 4096

_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL)

# (sha256(issuer DER), sha256(subject DER)) -> True for a verified signature.
_SIG_CACHE: dict[tuple[bytes, bytes], bool] = {}
# (sha256(issuer DER), sha256(CRL DER)) -> True for a verified CRL signature.
_CRL_SIG_CACHE: dict[tuple[bytes, bytes], bool] = {}


def _digest(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()


def _remember(cache: dict[tuple[bytes, bytes], bool], key: tuple[bytes, bytes]) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = True


def load_pem_chain(pem: bytes, *, max_certs: int = 8) -> list[x509.Certificate]:
    """Load a PEM certificate chain (concatenated ``CERTIFICATE`` blocks), in file order.

    Text outside the PEM blocks and a trailing NUL (as in Intel's C structures) are
    ignored.

    Args:
        pem: the PEM text, at most 64 KiB.
        max_certs: the largest number of certificates accepted.

    Returns:
        The certificates in the order they appear (Intel issuer chains are leaf first).

    Raises:
        ParseError: no certificate, more than ``max_certs``, oversized input or a block
            that is not a valid DER certificate.
    """
    if len(pem) > MAX_PEM_BYTES:
        raise ParseError(f"PEM chain too large ({len(pem)} bytes > {MAX_PEM_BYTES})")
    blocks = _PEM_BLOCK.findall(pem)
    if not blocks:
        raise ParseError("no PEM certificate found")
    if len(blocks) > max_certs:
        raise ParseError(f"PEM chain has {len(blocks)} certificates (limit {max_certs})")
    certs: list[x509.Certificate] = []
    for i, block in enumerate(blocks):
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            raise ParseError(f"PEM certificate #{i} is malformed") from None
    return certs


def _same_cert(a: x509.Certificate, b: x509.Certificate) -> bool:
    """Same DER, or same subject and same public key (a re-issued root)."""
    if a == b:
        return True
    return a.subject == b.subject and a.public_key() == b.public_key()


def _check_signature(subject: x509.Certificate, issuer: x509.Certificate) -> None:
    key = (_digest(issuer), _digest(subject))
    if key in _SIG_CACHE:
        return
    try:
        subject.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        raise VerificationError(
            f"certificate {subject.subject.rfc4514_string()!r} is not signed by "
            f"{issuer.subject.rfc4514_string()!r}"
        ) from None
    _remember(_SIG_CACHE, key)


def _check_validity(cert: x509.Certificate, now: datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise VerificationError(
            f"certificate {cert.subject.rfc4514_string()!r} is not valid at {now.isoformat()} "
            f"(valid {cert.not_valid_before_utc.isoformat()} .. "
            f"{cert.not_valid_after_utc.isoformat()})"
        )


def _check_ca(cert: x509.Certificate, intermediates_below: int) -> None:
    name = cert.subject.rfc4514_string()
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise VerificationError(f"issuer {name!r} has no BasicConstraints") from None
    except ValueError:
        raise VerificationError(f"issuer {name!r} has malformed extensions") from None
    if not bc.ca:
        raise VerificationError(f"issuer {name!r} is not a CA (BasicConstraints cA=FALSE)")
    if bc.path_length is not None and intermediates_below > bc.path_length:
        raise VerificationError(
            f"issuer {name!r} path length {bc.path_length} exceeded ({intermediates_below})"
        )
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        raise VerificationError(f"issuer {name!r} KeyUsage lacks keyCertSign")


def _check_time(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise VerificationError("'now' must be a timezone-aware datetime")


def check_crl(crl: x509.CertificateRevocationList, issuer: x509.Certificate, now: datetime) -> None:
    """Check that ``crl`` was issued by ``issuer`` and is current at ``now``.

    Checks: CRL issuer name equals the issuer certificate's subject; the CRL signature
    verifies with the issuer's public key (memoised); ``lastUpdate <= now <= nextUpdate``
    (RFC 5280 section 5.1.2.4-5; a CRL without nextUpdate is rejected).

    Raises:
        CollateralError: issuer mismatch, bad signature, missing nextUpdate, or the CRL
            expired / not yet valid.
    """
    _check_time(now)
    if crl.issuer != issuer.subject:
        raise CollateralError(
            f"CRL issuer {crl.issuer.rfc4514_string()!r} does not match "
            f"{issuer.subject.rfc4514_string()!r}"
        )
    key = (_digest(issuer), hashlib.sha256(crl.public_bytes(Encoding.DER)).digest())
    if key not in _CRL_SIG_CACHE:
        try:
            ok = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise CollateralError(
                f"CRL signature by {issuer.subject.rfc4514_string()!r} is invalid"
            )
        _remember(_CRL_SIG_CACHE, key)
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    except ValueError:
        raise CollateralError("CRL issuer certificate has malformed extensions") from None
    else:
        if not ku.crl_sign:
            raise CollateralError(
                f"CRL issuer {issuer.subject.rfc4514_string()!r} KeyUsage lacks cRLSign"
            )
    last = crl.last_update_utc
    nxt = crl.next_update_utc
    if nxt is None:
        raise CollateralError("CRL has no nextUpdate")
    if not last <= now <= nxt:
        raise CollateralError(
            f"CRL expired/not yet valid: {crl.issuer.rfc4514_string()!r} valid "
            f"{last.isoformat()} .. {nxt.isoformat()}, now {now.isoformat()}"
        )


def _find_anchor(
    last: x509.Certificate, anchors: Sequence[TrustAnchor]
) -> tuple[TrustAnchor, bool]:
    """Return (anchor, last_is_anchor)."""
    for anchor in anchors:
        if _same_cert(last, anchor.certificate):
            return anchor, True
    for anchor in anchors:
        if last.issuer == anchor.certificate.subject:
            try:
                _check_signature(last, anchor.certificate)
            except VerificationError:
                continue
            return anchor, False
    raise VerificationError(
        f"certificate chain does not terminate in a trusted root "
        f"(last issuer {last.issuer.rfc4514_string()!r})"
    )


def verify_chain(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[TrustAnchor],
    now: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> TrustAnchor:
    """Validate a leaf-first certificate chain up to one of ``anchors`` at ``now``.

    Args:
        chain: leaf first, each certificate issued by the next; may end with the root
            itself or with the certificate the root issued. At most 8 certificates.
        anchors: trusted roots; the chain must terminate in one of them exactly.
        now: timezone-aware verification time.
        crls: CRLs to apply; a CRL applies to every certificate whose issuer equals the
            CRL issuer (it must then be validly signed by that issuer and current).

    Returns:
        The anchor the chain terminates in.

    Raises:
        VerificationError: empty/oversized chain, name or signature mismatch, a
            certificate outside its validity window, an issuer that is not a CA,
            untrusted root, or "certificate revoked".
        CollateralError: a matching CRL is badly signed, expired or not yet valid.
    """
    _check_time(now)
    if not chain:
        raise VerificationError("empty certificate chain")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise VerificationError(f"certificate chain too long ({len(chain)})")
    anchor, last_is_anchor = _find_anchor(chain[-1], anchors)
    # Full path: chain certificates then the anchor (when the chain omits it).
    path: list[x509.Certificate] = list(chain[:-1]) if last_is_anchor else list(chain)
    path.append(anchor.certificate)

    for i, cert in enumerate(path[:-1]):
        issuer = path[i + 1]
        if cert.issuer != issuer.subject:
            raise VerificationError(
                f"issuer of {cert.subject.rfc4514_string()!r} is "
                f"{cert.issuer.rfc4514_string()!r}, next certificate is "
                f"{issuer.subject.rfc4514_string()!r}"
            )
        _check_signature(cert, issuer)
        _check_ca(issuer, i)
    for cert in path:
        _check_validity(cert, now)

    for crl in crls:
        for i, cert in enumerate(path[:-1]):
            if crl.issuer != cert.issuer:
                continue
            check_crl(crl, path[i + 1], now)
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise VerificationError(
                    f"certificate revoked: {cert.subject.rfc4514_string()!r} "
                    f"serial {cert.serial_number:#x}"
                )
    return anchor
