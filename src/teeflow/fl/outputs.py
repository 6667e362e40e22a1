"""The final model, sealed to the agreement's output recipients; verifying and opening it.

**Model file** (``teeflow-model/1``, :func:`seal_model`)::

    "TFMODEL\\x00\\x01" (9 bytes) | u32 big-endian header length | header (JSON, ≤ 64 KiB)
    | sealed blob (teeflow.sealing) of the model's canonical safetensors bytes

Header: ``format``, ``session``, ``federation``, ``agreement_digest``, ``arrays_digest`` (the
model digest, = the provenance log's final ``aggregate_digest``), ``arrays_size`` and
``recipients``: party → base64url wrapped data key. The data key is fresh and random (32
bytes); each copy is HPKE-wrapped (RFC 9180, :func:`teeflow.sealing.wrap_key`) to the
recipient's X25519 ``recipient_key`` from the agreement, with ``info =
b"teeflow/fl-model/v1"`` and ``aad = binding || party``. ``binding`` is the canonical JSON of
the header without ``recipients`` (RFC 8785 via
:func:`teeflow.kbs.policy.canonical.canonical_json`);
it is also the sealed blob's associated data. So the digest, session and agreement in the
header cannot be changed without every opening failing.

:func:`open_model` unwraps the party's copy, unseals, checks the plaintext digest against the
header and returns the arrays. :func:`verify_model` needs no key (with a recipient's key it
also authenticates the encrypted payload, every AEAD tag): it checks the provenance log
(chain; every entry's signature by the certificate of its segment — the session-start
aggregator's, then each restarted aggregator's from its hand-over on — and each of those
certificates under the federation CA, :func:`aggregator_certificate_check`) and that the log's
final digest is the header's digest — which the opening in turn binds to the plaintext.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from teeflow.errors import FLError, ParseError, SealingError, VerificationError
from teeflow.fl.arrays import ArrayDict, decode_arrays
from teeflow.fl.provenance import (
    CertificateCheck,
    ProvenanceEntry,
    ProvenanceError,
    embedded_certificate,
    load_provenance,
    verify_provenance,
)
from teeflow.kbs.ca.authority import CLOCK_SKEW, WorkloadIdentity, verify_workload_certificate
from teeflow.kbs.policy.agreement import FederationAgreement, OutputKind, digest
from teeflow.kbs.policy.canonical import b64url_decode, b64url_encode, canonical_json
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.sealing import (
    generate_key,
    parse_header,
    seal,
    unseal,
    unsealed_size,
    unwrap_key,
    wrap_key,
)

__all__ = [
    "MODEL_FORMAT",
    "MODEL_WRAP_INFO",
    "SERVING_FORMAT",
    "ModelHeader",
    "ServingHeader",
    "VerifiedModel",
    "aggregator_certificate_check",
    "model_recipients",
    "open_model",
    "open_serving_model",
    "read_model_header",
    "read_serving_header",
    "seal_for_serving",
    "seal_model",
    "seal_serving_model",
    "serving_resources",
    "verify_model",
]

MODEL_FORMAT = "teeflow-model/1"
MODEL_WRAP_INFO = b"teeflow/fl-model/v1"
_MAGIC = b"TFMODEL\x00\x01"
_MAX_HEADER = 64 * 1024
_HEX32 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelHeader:
    """The public header of a model file (module docstring)."""

    session: str
    federation: str
    agreement_digest: str
    arrays_digest: str
    arrays_size: int
    recipients: dict[str, str]
    binding: bytes
    body_offset: int


def model_recipients(agreement: FederationAgreement) -> dict[str, X25519PublicKey]:
    """``outputs.model`` parties of the agreement → their X25519 recipient keys.

    Raises:
        FLError: the agreement names no model recipient.
    """
    names = agreement.outputs.get(OutputKind.MODEL) or ()
    if not names:
        raise FLError("the agreement names no model recipient (outputs.model)")
    return {
        n: X25519PublicKey.from_public_bytes(
            b64url_decode(agreement.parties[n].recipient_key, length=32)
        )
        for n in names
    }


def _binding(session: str, federation: str, agreement_digest: str, digest: str, size: int) -> bytes:
    return canonical_json(
        {
            "format": MODEL_FORMAT,
            "session": session,
            "federation": federation,
            "agreement_digest": agreement_digest,
            "arrays_digest": digest,
            "arrays_size": size,
        }
    )


def seal_model(
    arrays: bytes,
    recipients: Mapping[str, X25519PublicKey],
    *,
    session: str,
    federation: str,
    agreement_digest: str,
) -> bytes:
    """A model file for ``arrays`` (canonical safetensors bytes) sealed to ``recipients``.

    Raises:
        FLError: no recipients, or ``arrays`` are not canonical safetensors.
        SealingError: a recipient key is invalid.
    """
    if not recipients:
        raise FLError("a model needs at least one recipient")
    try:
        decode_arrays(arrays)
    except ParseError as exc:
        raise FLError(f"the model is not canonical safetensors: {exc}") from None
    digest = hashlib.sha256(arrays).hexdigest()
    binding = _binding(session, federation, agreement_digest.lower(), digest, len(arrays))
    key = generate_key()
    wrapped = {
        party: b64url_encode(
            wrap_key(key, pub, info=MODEL_WRAP_INFO, aad=binding + b"\0" + party.encode())
        )
        for party, pub in sorted(recipients.items())
    }
    header = {**json.loads(binding), "recipients": wrapped}
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(raw) > _MAX_HEADER:
        raise FLError("too many recipients for one model header")
    return b"".join([_MAGIC, len(raw).to_bytes(4, "big"), raw, seal(arrays, key, aad=binding)])


def read_model_header(data: bytes) -> ModelHeader:
    """Parse a model file's header (bounded, total; nothing is authenticated yet).

    Raises:
        ParseError: bad magic, length, JSON or fields.
    """
    m = len(_MAGIC)
    if len(data) < m + 4 or data[:m] != _MAGIC:
        raise ParseError("not a teeflow model file (bad magic)")
    n = int.from_bytes(data[m : m + 4], "big")
    if n > _MAX_HEADER or m + 4 + n > len(data):
        raise ParseError("model header length out of range")
    try:
        doc = json.loads(data[m + 4 : m + 4 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ParseError("model header is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise ParseError(f"model header: format must be {MODEL_FORMAT}")
    fields = {k: doc.get(k) for k in ("session", "federation", "agreement_digest", "arrays_digest")}
    if not all(isinstance(v, str) and 0 < len(v) <= 128 for v in fields.values()):
        raise ParseError("model header: session, federation and digests must be strings")
    size = doc.get("arrays_size")
    recipients = doc.get("recipients")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ParseError("model header: arrays_size must be a non-negative integer")
    if (
        not isinstance(recipients, dict)
        or not recipients
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in recipients.items())
    ):
        raise ParseError("model header: recipients must map parties to wrapped keys")
    for name in ("agreement_digest", "arrays_digest"):
        if not _HEX32.fullmatch(str(fields[name])):
            raise ParseError(f"model header: {name} must be 64 lower-case hex digits")
    if set(doc) != {"format", "arrays_size", "recipients", *fields}:
        raise ParseError("model header: unknown or missing fields")
    s, f, a, d = (
        str(fields[k]) for k in ("session", "federation", "agreement_digest", "arrays_digest")
    )
    return ModelHeader(s, f, a, d, size, dict(recipients), _binding(s, f, a, d, size), m + 4 + n)


def open_model(model_file: Path | str | bytes, party_keys: PartyKeys) -> ArrayDict:
    """Decrypt a model file for ``party_keys`` (an authorised recipient) → named arrays.

    Raises:
        FLError: the party is not a recipient of this model.
        SealingError: the wrapped key or the sealed body does not open (tampered file, wrong
            party keys, changed header).
        VerificationError: the plaintext's digest differs from the header's.
        ParseError: malformed file or arrays.
    """
    data = model_file if isinstance(model_file, bytes) else _read(Path(model_file))
    header = read_model_header(data)
    wrapped = header.recipients.get(party_keys.name)
    if wrapped is None:
        raise FLError(f"party {party_keys.name} is not a recipient of this model")
    try:
        raw_wrapped = b64url_decode(wrapped)
    except ParseError:
        raise SealingError("the wrapped model key is not base64url") from None
    key = unwrap_key(
        raw_wrapped,
        party_keys.recipient_key,
        info=MODEL_WRAP_INFO,
        aad=header.binding + b"\0" + party_keys.name.encode(),
    )
    arrays = unseal(data[header.body_offset :], key, aad=header.binding)
    if (
        hashlib.sha256(arrays).hexdigest() != header.arrays_digest
        or len(arrays) != header.arrays_size
    ):
        raise VerificationError("the model's content does not match its digest")
    return decode_arrays(arrays)


def _read(path: Path, limit: int = 8 << 30) -> bytes:
    try:
        if path.stat().st_size > limit:
            raise ParseError(f"{path} is larger than {limit} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror or exc}") from None


def aggregator_certificate_check(
    ca: x509.Certificate, identities: list[WorkloadIdentity] | None = None
) -> CertificateCheck:
    """The :data:`~teeflow.fl.provenance.CertificateCheck` of provenance certificates: the
    certificate was issued by the federation CA ``ca`` to a workload of role ``aggregator``
    under the entry's agreement digest, with the entry's aggregator measurement — checked at
    the certificate's issue time (certificates are short lived, the log outlives them). The
    federation CA issues a certificate only to an attested workload whose measurement the
    agreement names for its role, for the key bound in its evidence.

    Args:
        ca: the federation CA certificate (from the KBS pin).
        identities: when given, each accepted identity is appended (for reports).

    Returns:
        ``check(certificate, entry)`` raising :class:`~teeflow.errors.VerificationError`.
    """

    def check(cert: x509.Certificate, entry: ProvenanceEntry) -> None:
        identity = verify_workload_certificate(
            cert,
            ca,
            now=cert.not_valid_before_utc + CLOCK_SKEW,
            # a hand-over after an agreement update: the agreement the instance attested under
            expected_agreement_digest=entry.agreement_in_force or entry.agreement_digest,
            required_role="aggregator",
        )
        if identity.measurement != entry.aggregator_measurement:
            raise VerificationError("the certificate's measurement is not the logged measurement")
        if identities is not None:
            identities.append(identity)

    return check


@dataclass(frozen=True)
class VerifiedModel:
    """What :func:`verify_model` established."""

    header: ModelHeader
    entries: tuple[ProvenanceEntry, ...]
    aggregator: WorkloadIdentity
    rounds: int
    #: every aggregator instance that signed a segment, session-start's first
    aggregators: tuple[WorkloadIdentity, ...] = ()
    #: the payload's AEAD tags and plaintext digest were checked (a recipient's keys given)
    payload_authenticated: bool = False

    @property
    def handovers(self) -> int:
        """Aggregator restarts recorded in the log."""
        return max(len(self.aggregators) - 1, 0)


def verify_model(
    model_file: Path | str | bytes,
    provenance: Path | str | list[ProvenanceEntry],
    ca: x509.Certificate,
    *,
    expected_agreement_digest: str | None = None,
    party_keys: PartyKeys | None = None,
) -> VerifiedModel:
    """Check a model file against its provenance log and check its encrypted payload.

    Checks: every segment certificate of the log — the session-start certificate and each
    hand-over's — passes :func:`aggregator_certificate_check` (federation CA ``ca``, role
    ``aggregator``, the log's agreement digest and the segment's measurement);
    :func:`~teeflow.fl.provenance.verify_provenance` (chain, every signature with its
    segment's certificate, final entry = the model header's digest); the header's session and
    agreement digest equal the log's; ``expected_agreement_digest`` if given. So a log or a
    model signed by any key other than certified aggregator keys is refused.

    The encrypted payload (the sealed blob after the header) is checked too. Without a key:
    its header commits to the model header (``aad_digest`` of the binding) and its length is
    exactly the sealed size of ``arrays_size`` bytes (a truncated, extended or swapped
    payload fails). With ``party_keys`` of a recipient: the payload is unsealed in memory —
    every chunk's AES-GCM tag (:func:`teeflow.sealing.unseal`) — and the plaintext's SHA-256
    must be the header's digest, i.e. the provenance log's final digest; the plaintext is
    not returned. AEAD tags cannot be checked without the data key, so a keyless check does
    not catch a bit flip inside the ciphertext: ``payload_authenticated`` says which.

    Args:
        party_keys: keys of a model recipient (``outputs.model``) to authenticate the payload.

    Raises:
        ProvenanceError (VerificationError): the log does not verify (``provenance entry N:
            aggregator certificate: ...`` for a session-start certificate the CA did not
            issue to an agreed aggregator; ``... hand-over certificate: ...`` for a
            hand-over's; ``... signature is invalid`` for an entry not signed by its
            segment's key).
        VerificationError: header mismatch, or the payload is not the sealed model the header
            describes (length, binding or plaintext digest).
        SealingError: with ``party_keys``: an AEAD tag does not verify (corrupt payload) or
            the wrapped key does not open.
        FLError: ``party_keys``' party is not a recipient of this model.
        ParseError: malformed model file or log.
    """
    data = model_file if isinstance(model_file, bytes) else _read(Path(model_file))
    header = read_model_header(data)
    entries = load_provenance(provenance) if not isinstance(provenance, list) else provenance
    cert = embedded_certificate(entries)
    first = entries[0]
    identities: list[WorkloadIdentity] = []
    check = aggregator_certificate_check(ca, identities)
    try:
        check(cert, first)
    except VerificationError as exc:
        raise ProvenanceError(1, f"aggregator certificate: {exc}") from None
    verify_provenance(entries, cert, expected_final_digest=header.arrays_digest, certify=check)
    if header.session != first.session or header.agreement_digest != first.agreement_digest:
        raise VerificationError("the model file names another session or agreement than the log")
    if expected_agreement_digest is not None and (
        first.agreement_digest != expected_agreement_digest.lower()
    ):
        raise VerificationError("the model was produced under another agreement")
    _check_payload(data, header)
    if party_keys is not None:
        open_model(data, party_keys)  # AEAD tags of every chunk + plaintext digest
    rounds = sum(1 for e in entries if e.kind == "round")
    return VerifiedModel(
        header,
        tuple(entries),
        identities[0],
        rounds,
        tuple(identities),
        payload_authenticated=party_keys is not None,
    )


def _check_payload(data: bytes, header: ModelHeader) -> None:
    body = memoryview(data)[header.body_offset :]
    try:
        sealed = parse_header(body)
        size = unsealed_size(body)
    except SealingError as exc:
        raise VerificationError(f"the model's encrypted payload is malformed: {exc}") from None
    if not sealed.binds(header.binding):
        raise VerificationError("the model's encrypted payload is not bound to its header")
    if size != header.arrays_size:
        raise VerificationError(
            f"the model's encrypted payload holds {size} bytes, the header says "
            f"{header.arrays_size} (truncated or extended file)"
        )


# -- models sealed for the serving workload (issue 12) ----------------------------------------

#: ``format`` of a model file sealed for serving (:func:`seal_serving_model`).
SERVING_FORMAT = "teeflow-serve-model/1"
_SERVE_MAGIC = b"TFSERVE\x00\x01"
_SERVE_KINDS = ("arrays", "onnx")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ServingHeader:
    """The public header of a model sealed for serving (:func:`seal_serving_model`).

    Attributes:
        name: the model name the server publishes (OIP ``/v2/models/{name}``).
        kind: ``arrays`` (canonical safetensors for a package's ``predict``) or ``onnx``.
        federation, agreement_digest: where it was sealed.
        package_digest: the compute package whose ``predict`` runs it (hex) or None (ONNX).
        key_path: the KBS resource holding the 32-byte key (released to role ``serve``).
        digest, size: SHA-256 (hex) and size of the plaintext payload.
        binding: the canonical header, the sealed blob's associated data.
    """

    name: str
    kind: str
    federation: str
    agreement_digest: str
    package_digest: str | None
    key_path: str
    digest: str
    size: int
    binding: bytes
    body_offset: int


def seal_serving_model(
    payload: bytes,
    key: bytes,
    *,
    name: str,
    kind: str,
    federation: str,
    agreement_digest: str,
    package_digest: str | None,
    key_path: str,
) -> bytes:
    """A serving model file: ``"TFSERVE\\x00\\x01" | u32 BE header length | header (RFC 8785
    JSON) | seal(payload, key, aad=header)`` (:func:`teeflow.sealing.seal`: AES-256-GCM
    stream). Every header field is bound to the ciphertext.

    Raises:
        FLError: bad name/kind, or ``payload`` is not canonical safetensors for ``arrays``.
        SealingError: ``key`` is not 32 bytes.
    """
    if not _NAME.fullmatch(name) or kind not in _SERVE_KINDS:
        raise FLError("a serving model needs a name [A-Za-z0-9._-]{1,64} and kind arrays|onnx")
    if kind == "arrays":
        try:
            decode_arrays(payload)
        except ParseError as exc:
            raise FLError(f"the model is not canonical safetensors: {exc}") from None
    header = {
        "format": SERVING_FORMAT,
        "name": name,
        "kind": kind,
        "federation": federation,
        "agreement_digest": agreement_digest.lower(),
        "package_digest": None if package_digest is None else package_digest.lower(),
        "key_path": key_path,
        "digest": hashlib.sha256(payload).hexdigest(),
        "size": len(payload),
    }
    raw = canonical_json(header)
    return b"".join([_SERVE_MAGIC, len(raw).to_bytes(4, "big"), raw, seal(payload, key, aad=raw)])


def read_serving_header(data: bytes) -> ServingHeader:
    """Parse a serving model file's header (bounded, total; not yet authenticated: the
    header is the ciphertext's associated data, checked by :func:`open_serving_model`).

    Raises:
        ParseError: bad magic, length, JSON or fields.
    """
    m = len(_SERVE_MAGIC)
    if len(data) < m + 4 or data[:m] != _SERVE_MAGIC:
        raise ParseError("not a teeflow serving model (bad magic)")
    n = int.from_bytes(data[m : m + 4], "big")
    if n > _MAX_HEADER or m + 4 + n > len(data):
        raise ParseError("serving model header length out of range")
    raw = data[m + 4 : m + 4 + n]
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ParseError("serving model header is not JSON") from None
    keys = {"format", "name", "kind", "federation", "agreement_digest", "package_digest",
            "key_path", "digest", "size"}
    if not isinstance(doc, dict) or set(doc) != keys or doc["format"] != SERVING_FORMAT:
        raise ParseError(f"serving model header: not a {SERVING_FORMAT} header")
    strs = ("name", "kind", "federation", "key_path")
    if not all(isinstance(doc[k], str) and 0 < len(doc[k]) <= 400 for k in strs):
        raise ParseError("serving model header: bad string field")
    pkg = doc["package_digest"]
    hexes = [doc["agreement_digest"], doc["digest"]] + ([] if pkg is None else [pkg])
    if not all(isinstance(h, str) and _HEX32.fullmatch(h) for h in hexes):
        raise ParseError("serving model header: digests must be 64 lower-case hex digits")
    size = doc["size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 8 << 30:
        raise ParseError("serving model header: bad size")
    if doc["kind"] not in _SERVE_KINDS or canonical_json(doc) != raw:
        raise ParseError("serving model header: bad kind or not canonical JSON")
    return ServingHeader(doc["name"], doc["kind"], doc["federation"], doc["agreement_digest"],
                         pkg, doc["key_path"], doc["digest"], size, raw, m + 4 + n)


def open_serving_model(data: bytes, key: bytes) -> tuple[ServingHeader, bytes]:
    """Unseal a serving model in memory → ``(header, payload)``.

    Raises:
        ParseError: malformed file.
        SealingError: wrong key, tampered body or header.
        VerificationError: the payload's digest or size differs from the header's.
    """
    header = read_serving_header(data)
    payload = unseal(data[header.body_offset :], key, aad=header.binding)
    if hashlib.sha256(payload).hexdigest() != header.digest or len(payload) != header.size:
        raise VerificationError("the serving model's content does not match its digest")
    return header, payload


def serving_resources(agreement: FederationAgreement, session: str) -> list[str]:
    """KBS resources an aggregator claims to seal its final model for serving:
    ``[fl/serve-key/<session>]`` when the agreement has ``outputs.serve``, else ``[]``."""
    from teeflow.kbs.policy.generated import serve_key_path

    return [serve_key_path(session)] if agreement.outputs.get(OutputKind.SERVE) else []


def seal_for_serving(
    arrays: bytes,
    agreement: FederationAgreement,
    *,
    session: str,
    package_digest: str,
    fetch_key: Callable[[str], bytes],
    out_dir: Path,
) -> Path | None:
    """The aggregator's hook: when the agreement has ``outputs.serve``, seal the final model
    (canonical safetensors) under the KBS-generated ``fl/serve-key/<session>`` (fetched with
    ``fetch_key``; released only to attested aggregators and ``serve`` workloads) as
    ``<out_dir>/<session>.serve`` and return its path; else None.

    Raises:
        FLError: cannot write the file; KbsError subclasses from ``fetch_key``.
    """
    paths = serving_resources(agreement, session)
    if not paths:
        return None
    key = fetch_key(paths[0])
    sealed = seal_serving_model(
        arrays, key, name=session, kind="arrays", federation=agreement.federation,
        agreement_digest=digest(agreement).hex(), package_digest=package_digest,
        key_path=paths[0],
    )
    out = Path(out_dir) / f"{session}.serve"
    try:
        out.write_bytes(sealed)
    except OSError as exc:
        raise FLError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out
