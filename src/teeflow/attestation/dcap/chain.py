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
  objects -- either its last certificate *is* the anchor (byte-identical DER) or its last
  certificate is directly issued by the anchor. A self-signed root inside the chain is
  never trusted on its own, and a chain certificate that carries an anchor's subject or
  public key without being byte-identical to it (a re-issued or tampered copy of the
  root) is rejected;
* every certificate (and the anchor) must contain ``now`` in its validity window;
* every issuer must be a CA (BasicConstraints ``cA=TRUE``, path length respected, and
  ``keyCertSign`` when a KeyUsage extension is present).

``cryptography`` parses certificate and CRL fields lazily, so reading a field of a
malformed object can raise ``ValueError``, ``TypeError``, ``InvalidVersion``,
``DuplicateExtension``, ``UnsupportedAlgorithm`` and others. Every function here converts
those (:data:`X509_ERRORS`) into teeflow errors: it fails closed with typed errors only.

Signature checks are memoised in a bounded process-wide cache keyed on
``(SHA-256(issuer DER), SHA-256(subject DER))`` because a verifier checks the same
Intel chain for every quote; validity windows and revocation are re-checked on every
call.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import CollateralError, Error, ParseError, VerificationError

__all__ = [
    "MAX_CHAIN_LENGTH",
    "MAX_PEM_BYTES",
    "X509_ERRORS",
    "check_crl",
    "load_pem_chain",
    "parse_certificate_fields",
    "parse_crl_fields",
    "verify_chain",
    "x509_errors_as",
]

#: Longest chain (leaf first, root optional) :func:`verify_chain` accepts.
MAX_CHAIN_LENGTH = 8
#: Largest PEM chain :func:`load_pem_chain` reads, in bytes.
MAX_PEM_BYTES = 64 * 1024
_CACHE_LIMIT = 4096

#: Exceptions ``cryptography`` raises while lazily parsing or checking a malformed
#: certificate or CRL (``ExtensionNotFound`` is handled where an extension is optional).
X509_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    ArithmeticError,
    LookupError,
    UnsupportedAlgorithm,
    InvalidSignature,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.AttributeNotFound,
    x509.ExtensionNotFound,
)

# The whole input: optional whitespace, CERTIFICATE blocks (base64 lines) separated only by
# whitespace, optional trailing NULs (Intel's C strings). Linear: no nested ambiguity.
_PEM_CHAIN = re.compile(
    rb"[ \t\r\n]*(?:-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]*"
    rb"-----END CERTIFICATE-----[ \t\r\n]*)+\x00*"
)
_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]*-----END CERTIFICATE-----"
)

# (sha256(issuer DER), sha256(subject DER)) -> True for a verified signature.
_SIG_CACHE: dict[tuple[bytes, bytes], bool] = {}
# (sha256(issuer DER), sha256(CRL DER)) -> True for a verified CRL signature.
_CRL_SIG_CACHE: dict[tuple[bytes, bytes], bool] = {}


@contextmanager
def x509_errors_as(error: type[Error], what: str) -> Iterator[None]:
    """Turn :data:`X509_ERRORS` raised in the block into ``error("<what>: <type name>")``.

    teeflow errors raised in the block pass through unchanged. The message names only
    the exception type (never certificate contents).
    """
    try:
        yield
    except Error:
        raise
    except X509_ERRORS as exc:
        raise error(f"{what}: {type(exc).__name__}") from None


def parse_certificate_fields(cert: x509.Certificate) -> None:
    """Force ``cryptography``'s lazy parsing of every field teeflow reads from ``cert``.

    Touches version, serial, names (and their RFC 4514 forms), validity, extensions,
    public key and signature algorithm, so a malformed certificate fails here rather
    than deep inside a later check.

    Raises:
        ParseError: "malformed certificate: <exception type>".
    """
    with x509_errors_as(ParseError, "malformed certificate"):
        _touch_certificate(cert, ParseError)


def _signature_bits_padded(obj: x509.Certificate | x509.CertificateRevocationList) -> bool:
    """True if the signatureValue BIT STRING declares unused bits.

    The DER of a certificate or CRL ends with that BIT STRING (RFC 5280 section 4.1 /
    5.1); its first content byte, just before the signature bytes, counts unused bits.
    That byte is outside the signed data, so a non-zero value would be an unsigned
    mutation of an otherwise validly signed object.
    """
    der = obj.public_bytes(Encoding.DER)
    return der[-len(obj.signature) - 1] != 0


def _touch_certificate(cert: x509.Certificate, error: type[Error]) -> None:
    _ = (cert.version, cert.serial_number, cert.issuer, cert.subject, cert.extensions)
    _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.signature_hash_algorithm)
    _ = (cert.public_key(), cert.signature_algorithm_oid, cert.tbs_certificate_bytes)
    _ = (cert.issuer.rfc4514_string(), cert.subject.rfc4514_string())
    if _signature_bits_padded(cert):
        raise error(f"certificate {_name(cert)!r}: signature BIT STRING has unused bits")


def parse_crl_fields(crl: x509.CertificateRevocationList) -> None:
    """Force lazy parsing of a CRL: issuer, update times, extensions, every revoked entry.

    Raises:
        ParseError: "malformed CRL: <exception type>".
    """
    with x509_errors_as(ParseError, "malformed CRL"):
        _ = (crl.issuer, crl.issuer.rfc4514_string(), crl.last_update_utc, crl.next_update_utc)
        _ = (crl.extensions, crl.signature_hash_algorithm, crl.tbs_certlist_bytes)
        for entry in crl:
            _ = (entry.serial_number, entry.revocation_date_utc, entry.extensions)
        if _signature_bits_padded(crl):
            raise ParseError("malformed CRL: signature BIT STRING has unused bits")


def _digest(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return hashlib.sha256(obj.public_bytes(Encoding.DER)).digest()


def _name(cert: x509.Certificate) -> str:
    """The subject as RFC 4514 text, for error messages only (never raises)."""
    try:
        return cert.subject.rfc4514_string()
    except X509_ERRORS:
        return "<malformed subject>"


def _remember(cache: dict[tuple[bytes, bytes], bool], key: tuple[bytes, bytes]) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = True


def load_pem_chain(pem: bytes, *, max_certs: int = 8) -> list[x509.Certificate]:
    """Load a PEM certificate chain (concatenated ``CERTIFICATE`` blocks), in file order.

    Accepted form (strict): optional whitespace, one or more ``-----BEGIN CERTIFICATE-----``
    blocks of base64 lines separated only by whitespace / line breaks, then optional
    trailing NUL bytes (as in Intel's C structures). Any other text -- PEM headers,
    comments, other block types -- is rejected. Every certificate is fully parsed
    (:func:`parse_certificate_fields`).

    Args:
        pem: the PEM text, at most 64 KiB.
        max_certs: the largest number of certificates accepted.

    Returns:
        The certificates in the order they appear (Intel issuer chains are leaf first).

    Raises:
        ParseError: no certificate, text outside the blocks, more than ``max_certs``,
            oversized input or a block that is not a valid DER certificate.
    """
    if len(pem) > MAX_PEM_BYTES:
        raise ParseError(f"PEM chain too large ({len(pem)} bytes > {MAX_PEM_BYTES})")
    if _PEM_CHAIN.fullmatch(pem) is None:
        if _PEM_BLOCK.search(pem) is None:
            raise ParseError("no PEM certificate found")
        raise ParseError("PEM chain has text outside its CERTIFICATE blocks")
    blocks = _PEM_BLOCK.findall(pem)
    if len(blocks) > max_certs:
        raise ParseError(f"PEM chain has {len(blocks)} certificates (limit {max_certs})")
    certs: list[x509.Certificate] = []
    for i, block in enumerate(blocks):
        try:
            cert = x509.load_pem_x509_certificate(block)
            parse_certificate_fields(cert)
        except ParseError:
            raise ParseError(f"PEM certificate #{i} is malformed") from None
        except X509_ERRORS:
            raise ParseError(f"PEM certificate #{i} is malformed") from None
        certs.append(cert)
    return certs


def _check_signature(subject: x509.Certificate, issuer: x509.Certificate) -> None:
    key = (_digest(issuer), _digest(subject))
    if key in _SIG_CACHE:
        return
    try:
        subject.verify_directly_issued_by(issuer)
    except X509_ERRORS:
        raise VerificationError(
            f"certificate {_name(subject)!r} is not signed by {_name(issuer)!r}"
        ) from None
    _remember(_SIG_CACHE, key)


def _check_validity(cert: x509.Certificate, now: datetime) -> None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not start <= now <= end:
        raise VerificationError(
            f"certificate {_name(cert)!r} is not valid at {now.isoformat()} "
            f"(valid {start.isoformat()} .. {end.isoformat()})"
        )


def _check_ca(cert: x509.Certificate, intermediates_below: int) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise VerificationError(f"issuer {_name(cert)!r} has no BasicConstraints") from None
    except X509_ERRORS:
        raise VerificationError(f"issuer {_name(cert)!r} has malformed extensions") from None
    if not bc.ca:
        raise VerificationError(f"issuer {_name(cert)!r} is not a CA (BasicConstraints cA=FALSE)")
    if bc.path_length is not None and intermediates_below > bc.path_length:
        raise VerificationError(
            f"issuer {_name(cert)!r} path length {bc.path_length} exceeded ({intermediates_below})"
        )
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        raise VerificationError(f"issuer {_name(cert)!r} KeyUsage lacks keyCertSign")


def _check_time(now: datetime) -> None:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise VerificationError("'now' must be a timezone-aware datetime")


def check_crl(crl: x509.CertificateRevocationList, issuer: x509.Certificate, now: datetime) -> None:
    """Check that ``crl`` was issued by ``issuer`` and is current at ``now``.

    Checks: CRL issuer name equals the issuer certificate's subject; the CRL signature
    verifies with the issuer's public key (memoised); the issuer's KeyUsage (when present)
    has ``cRLSign``; ``lastUpdate <= now <= nextUpdate`` (RFC 5280 section 5.1.2.4-5; a
    CRL without nextUpdate is rejected).

    Raises:
        CollateralError: issuer mismatch, bad signature, missing nextUpdate, the CRL
            expired / not yet valid, or a malformed CRL or issuer certificate.
        VerificationError: ``now`` is not timezone-aware.
    """
    _check_time(now)
    with x509_errors_as(CollateralError, "malformed CRL or CRL issuer"):
        _check_crl(crl, issuer, now)


def _check_crl(
    crl: x509.CertificateRevocationList, issuer: x509.Certificate, now: datetime
) -> None:
    if crl.issuer != issuer.subject:
        raise CollateralError(
            f"CRL issuer {crl.issuer.rfc4514_string()!r} does not match {_name(issuer)!r}"
        )
    if _signature_bits_padded(crl):
        raise CollateralError("CRL signature BIT STRING has unused bits")
    key = (_digest(issuer), _digest(crl))
    if key not in _CRL_SIG_CACHE:
        try:
            ok = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        except X509_ERRORS:
            ok = False
        if not ok:
            raise CollateralError(f"CRL signature by {_name(issuer)!r} is invalid")
        _remember(_CRL_SIG_CACHE, key)
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    except X509_ERRORS:
        raise CollateralError("CRL issuer certificate has malformed extensions") from None
    else:
        if not ku.crl_sign:
            raise CollateralError(f"CRL issuer {_name(issuer)!r} KeyUsage lacks cRLSign")
    last = crl.last_update_utc
    nxt = crl.next_update_utc
    if nxt is None:
        raise CollateralError("CRL has no nextUpdate")
    if not last <= now <= nxt:
        raise CollateralError(
            f"CRL expired/not yet valid: {crl.issuer.rfc4514_string()!r} valid "
            f"{last.isoformat()} .. {nxt.isoformat()}, now {now.isoformat()}"
        )


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _reject_imitations(chain: Sequence[x509.Certificate], anchors: Sequence[TrustAnchor]) -> None:
    """A chain certificate with an anchor's subject or key must be byte-identical to it.

    Otherwise a quote or collateral file could carry an altered copy of the root (same
    subject and key, other extensions or validity) that would be taken for the anchor.
    """
    roots = [
        (
            a.certificate.public_bytes(Encoding.DER),
            a.certificate.subject,
            _spki(a.certificate),
            a.emulated,
        )
        for a in anchors
    ]
    anchor_ders = {der for der, _, _, _ in roots}
    for cert in chain:
        if cert.public_bytes(Encoding.DER) in anchor_ders:
            continue
        subject, spki = cert.subject, _spki(cert)
        for _, root_subject, root_spki, emulated in roots:
            if subject == root_subject or spki == root_spki:
                hint = (
                    " — this is another site's emulation root (same name as this home's): "
                    "trust it by its certificate with `teeflow emulate export` there and "
                    "`teeflow emulate trust` here (docs/emulation.md)"
                    if emulated
                    else ""
                )
                raise VerificationError(
                    "certificate chain does not terminate in a trusted root: certificate "
                    f"{_name(cert)!r} imitates a trust anchor (same subject or public key, "
                    f"DER differs){hint}"
                )


def _find_anchor(
    last: x509.Certificate, anchors: Sequence[TrustAnchor]
) -> tuple[TrustAnchor, bool]:
    """Return (anchor, last_is_anchor); ``last`` is the anchor only if its DER is identical."""
    der = last.public_bytes(Encoding.DER)
    for anchor in anchors:
        if der == anchor.certificate.public_bytes(Encoding.DER):
            return anchor, True
    for anchor in anchors:
        if last.issuer == anchor.certificate.subject:
            try:
                _check_signature(last, anchor.certificate)
            except VerificationError:
                continue
            return anchor, False
    issuer = last.issuer.rfc4514_string()
    hint = (
        " — an emulation root this home does not trust: if it is another site's, trust it "
        "by its certificate (`teeflow emulate export` there, `teeflow emulate trust` here; "
        "docs/emulation.md)"
        if "O=teeflow emulation" in issuer
        else ""
    )
    raise VerificationError(
        f"certificate chain does not terminate in a trusted root (last issuer {issuer!r}){hint}"
    )


def verify_chain(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[TrustAnchor],
    now: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> TrustAnchor:
    """Validate a leaf-first certificate chain up to one of ``anchors`` at ``now``.

    Every chain certificate is fully parsed first (a malformed field fails here, typed),
    then checked against the anchors (exact DER, no look-alikes), linked, signature- and
    CA-checked, and its validity window compared with ``now``; CRLs are applied last.

    Args:
        chain: leaf first, each certificate issued by the next; may end with the root
            itself (byte-identical to an anchor) or with the certificate the root
            issued. At most 8 certificates.
        anchors: trusted roots; the chain must terminate in one of them exactly.
        now: timezone-aware verification time.
        crls: CRLs to apply; a CRL applies to every certificate whose issuer equals the
            CRL issuer (it must then be validly signed by that issuer and current).

    Returns:
        The anchor the chain terminates in.

    Raises:
        VerificationError: empty/oversized chain, name or signature mismatch, a
            certificate outside its validity window, an issuer that is not a CA,
            untrusted root, a certificate imitating an anchor (same subject or key,
            different DER), a malformed certificate, or "certificate revoked".
        CollateralError: a matching CRL is malformed, badly signed, expired or not yet
            valid.
    """
    _check_time(now)
    if not chain:
        raise VerificationError("empty certificate chain")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise VerificationError(f"certificate chain too long ({len(chain)})")
    with x509_errors_as(VerificationError, "malformed certificate in chain"):
        for cert in chain:
            _touch_certificate(cert, VerificationError)
        _reject_imitations(chain, anchors)
        anchor, last_is_anchor = _find_anchor(chain[-1], anchors)
        # Full path: chain certificates then the anchor (when the chain omits it).
        path: list[x509.Certificate] = list(chain[:-1]) if last_is_anchor else list(chain)
        path.append(anchor.certificate)
        for i, cert in enumerate(path[:-1]):
            issuer = path[i + 1]
            if cert.issuer != issuer.subject:
                raise VerificationError(
                    f"issuer of {_name(cert)!r} is {cert.issuer.rfc4514_string()!r}, "
                    f"next certificate is {_name(issuer)!r}"
                )
            _check_signature(cert, issuer)
            _check_ca(issuer, i)
        for cert in path:
            _check_validity(cert, now)
    with x509_errors_as(CollateralError, "malformed CRL"):
        for crl in crls:
            for i, cert in enumerate(path[:-1]):
                if crl.issuer != cert.issuer:
                    continue
                check_crl(crl, path[i + 1], now)
                if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                    raise VerificationError(
                        f"certificate revoked: {_name(cert)!r} serial {cert.serial_number:#x}"
                    )
    return anchor
