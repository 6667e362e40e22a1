"""The serving workload (role ``serve``): attest, get the model key from the KBS, unseal the
model in memory, prove the HPKE key, report usage.

**Start** (:meth:`ServeWorkload.start`): read the serving model's public header
(:func:`teeflow.fl.outputs.read_serving_header`); attest to the pinned KBS as role ``serve``
claiming the model's key path (and, for a package model, the package digest and function
``predict``), with the operator's enrollment; get a workload certificate for the attested
P-256 key (the HTTPS certificate, chaining to the federation CA with role ``serve``, the
agreement digest and the measurement); fetch the model key — the KBS releases it only to an
attested ``serve`` workload whose measurement the agreement names (KBS-generated
``fl/serve-key/<session>``) or whose grant allows it (``teeflow model publish --serve``); open
the model in memory (:func:`~teeflow.fl.outputs.open_serving_model`) and build the predictor.
A fresh X25519 key is the HPKE key requests are sealed to; the certified key signs it
(:meth:`ServeWorkload.attestation`), so a client that checks the certificate knows the HPKE
key lives in the attested workload.

**Usage** (:meth:`ServeWorkload.flush_usage`): counts are reported as signed batches to the
KBS audit log (:mod:`teeflow.kbs.service.usage`); an expired token is renewed by attesting
again.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import teeflow
from teeflow.errors import Error, KbsError, ParseError
from teeflow.fl.arrays import decode_arrays
from teeflow.fl.outputs import ServingHeader, open_serving_model, read_serving_header
from teeflow.fl.package import package_digest
from teeflow.fl.publish import SERVE_FUNCTION, fetch_resource
from teeflow.kbs.api.problems import TokenNotFound, TokenVerifierError
from teeflow.kbs.client.pinning import Pin
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.canonical import b64url_encode, canonical_json
from teeflow.platform.base import Attester
from teeflow.serve.access import AccessControl
from teeflow.serve.e2e import raw_public
from teeflow.serve.model import OnnxPredictor, PackagePredictor, Predictor
from teeflow.workload.manifest import WorkloadManifest, measurement

__all__ = ["ATTESTATION_DOMAIN", "SERVE_ENTRYPOINT", "ServeWorkload", "serve_measurement",
           "statement"]

SERVE_ENTRYPOINT = ("teeflow", "serve")
#: Domain separator of the HPKE-key statement the certified key signs.
ATTESTATION_DOMAIN = b"teeflow-serve-attestation-v1\0"
_LOG = logging.getLogger("teeflow.serve")


@functools.lru_cache(maxsize=2)
def serve_measurement(package_dir: Path | None = None) -> bytes:
    """SHA-256 measurement (32 bytes) of the serving workload's built-in manifest: the files
    of the KBS manifest (:func:`teeflow.kbs.service.self_attestation.kbs_manifest`: every
    ``.py``/``.pem``/``.der`` of the teeflow package), entrypoint ``teeflow serve`` — what an
    emulated platform reports (a real TEE reports its own; ``teeflow serve --measurement``).

    Raises:
        WorkloadError: a file cannot be read.
    """
    from teeflow.kbs.service.self_attestation import kbs_manifest

    root = Path(package_dir) if package_dir is not None else Path(teeflow.__file__).parent
    files = [f.path for f in kbs_manifest(root).trusted_files]
    return measurement(WorkloadManifest.build(root, entrypoint=list(SERVE_ENTRYPOINT),
                                              files=files, name="teeflow-serve",
                                              version=teeflow.__version__))


def statement(hpke_key: bytes, model: str, model_digest: str, nonce: str | None) -> bytes:
    """What the certified key signs: :data:`ATTESTATION_DOMAIN` || RFC 8785 JSON of
    ``{hpke_key (b64url), model, model_digest, nonce}`` (``nonce`` null without one)."""
    return ATTESTATION_DOMAIN + canonical_json({
        "hpke_key": b64url_encode(hpke_key), "model": model, "model_digest": model_digest,
        "nonce": nonce})


class ServeWorkload:
    """A serving workload (module docstring).

    Args:
        pin: the verified KBS (:class:`Pin` or pin file); platform: the attester.
        model: the sealed serving model (path or bytes).
        package: the compute package archive (bytes or path) for a package model.
        kbs_url: KBS URL (default ``pin.url``); enrollment: the operator's enrollment token
            (role ``serve``); config: the ``config`` given to ``predict``.
        onnx_threads: onnxruntime intra-op threads.
    """

    def __init__(self, pin: Pin | Path | str, platform: Attester, model: Path | bytes, *,
                 package: Path | bytes | None = None, kbs_url: str | None = None,
                 enrollment: str | None = None, config: Mapping[str, Any] | None = None,
                 onnx_threads: int = 1) -> None:
        self.pin = pin if isinstance(pin, Pin) else Pin.load(pin)
        self.platform = platform
        self._model = model if isinstance(model, bytes) else _read(Path(model))
        self._package = (package if isinstance(package, bytes) or package is None
                         else _read(Path(package)))
        self.kbs_url = kbs_url or self.pin.url
        self.enrollment = enrollment
        self.config = dict(config or {})
        self.onnx_threads = onnx_threads
        self.header: ServingHeader = read_serving_header(self._model)
        self.predictor: Predictor | None = None
        self.access: AccessControl | None = None
        self.agreement: FederationAgreement | None = None
        self.certificate: x509.Certificate | None = None
        self.certificate_pem = b""
        self.tls_key: ec.EllipticCurvePrivateKey | None = None
        self.hpke_key = X25519PrivateKey.generate()
        self._kbs: KbsClient | None = None
        self._claims: dict[str, Any] = {}
        self._seq = 0
        self._usage_lock = threading.Lock()
        self.audited = 0

    @property
    def name(self) -> str:
        """The model name (OIP ``/v2/models/{name}``)."""
        return self.header.name

    @property
    def ready(self) -> bool:
        """True once the model is loaded."""
        return self.predictor is not None

    def start(self) -> ServeWorkload:
        """Attest, obtain certificate and model key, load the model (module docstring).

        Raises:
            AttestationFailed, PolicyDeny: the KBS refused the workload or the key (e.g.
                another measurement, no enrollment, not granted).
            KbsError: no agreement; ParseError/SealingError/VerificationError: the model
                file does not open; PackageError/WorkloadError: the inference code.
        """
        h = self.header
        kbs = KbsClient(self.kbs_url, self.pin, self.platform, enrollment=self.enrollment)
        self._kbs = kbs
        signed = kbs.current_agreement()
        if signed is None:
            raise KbsError("the KBS has no federation agreement")
        self.agreement = signed.agreement
        if h.federation != signed.agreement.federation:
            raise KbsError(f"the model was sealed for federation {h.federation}")
        self._claims = {"resources": [h.key_path]}
        if h.package_digest is not None:
            if self._package is None:
                raise KbsError("this model runs a compute package: give --package")
            if package_digest(self._package).hex() != h.package_digest:
                raise KbsError(f"the package is not {h.package_digest}, which the model names")
            self._claims |= {"package_digest": h.package_digest, "function": SERVE_FUNCTION}
        kbs.attest("serve", self._claims)
        pem, key = kbs.get_certificate()
        self.certificate_pem, self.tls_key = pem, key
        self.certificate = x509.load_pem_x509_certificate(pem)
        model_key = fetch_resource(kbs, h.key_path)
        header, payload = open_serving_model(self._model, model_key)
        del model_key
        if header.kind == "onnx":
            self.predictor = OnnxPredictor(payload, threads=self.onnx_threads)
        else:
            assert self._package is not None and header.package_digest is not None
            self.predictor = PackagePredictor(self._package, header.package_digest,
                                              decode_arrays(payload), self.config)
        del payload
        self.access = AccessControl(signed.agreement.serving, sorted(signed.agreement.parties))
        return self

    def attestation(self, nonce: str | None = None) -> dict[str, Any]:
        """``GET /v2/attestation``: the certificate, the HPKE key and the certified key's
        signature over :func:`statement` (with the client's ``nonce`` when given).

        Raises:
            KbsError: not started.
        """
        if self.tls_key is None:
            raise KbsError("start the workload first")
        pub = raw_public(self.hpke_key.public_key())
        sig = self.tls_key.sign(statement(pub, self.name, self.header.digest, nonce),
                                ec.ECDSA(hashes.SHA256()))
        return {"certificate": self.certificate_pem.decode("ascii"),
                "hpke_key": b64url_encode(pub), "model": self.name,
                "model_digest": self.header.digest, "nonce": nonce,
                "signature": b64url_encode(sig)}

    def flush_usage(self) -> int | None:
        """Write the counts since the last batch to the KBS audit log as a signed batch;
        returns its audit sequence number (None if nothing to write or it failed — the
        counts are then kept for the next batch)."""
        if self.access is None or self._kbs is None:
            return None
        with self._usage_lock:
            batch = self.access.take_batch()
            if batch is None:
                return None
            answered, refused = batch
            doc = {"model": self.name, "model_digest": self.header.digest, "seq": self._seq,
                   "counts": answered, "refused": refused}
            try:
                try:
                    result = self._kbs.report_usage(doc)
                except (TokenVerifierError, TokenNotFound):  # token expired: attest again
                    self._kbs.attest("serve", self._claims)
                    result = self._kbs.report_usage(doc)
            except Error as exc:
                _LOG.warning("usage batch not written (%s); kept for the next one",
                             type(exc).__name__)
                self.access.restore(answered, refused)
                return None
            self._seq += 1
            self.audited += sum(answered.values())
            seq = result.get("seq")
            return seq if isinstance(seq, int) else None

    def close(self) -> None:
        """Write the last usage batch, drop the model and close the KBS client."""
        try:
            self.flush_usage()
        finally:
            if self.predictor is not None:
                self.predictor.close()
                self.predictor = None
            if self._kbs is not None:
                self._kbs.close()
                self._kbs = None


def _read(path: Path, limit: int = 8 << 30) -> bytes:
    try:
        if path.stat().st_size > limit:
            raise ParseError(f"{path} is larger than {limit} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror or exc}") from None
