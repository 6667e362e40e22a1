"""Emulated SGX platform: real-format Intel DCAP evidence under a local emulation root.

:class:`EmulationAuthority` is a local stand-in for Intel's PKI and PCS (see
:mod:`teeflow.platform.emulated_authority` and :mod:`teeflow.platform.emulated_collateral`);
:class:`EmulatedSgx` is the Attester: ``quote(report_data)`` returns an Intel DCAP ECDSA
quote v3 (Intel SGX ECDSA Quote Library API, Appendix A) that the *same* verifier as for
hardware quotes accepts — ``teeflow.attestation.sgx.verify(parse_quote(q),
anchors=[authority.trust_anchor()], collateral=authority.collateral(now), now=now)`` — and
that fails against the Intel root alone. Nothing produced here is hardware evidence: the
root's CN says so, and the default appraisal policy denies ``TrustAnchor.emulated``.

Quote contents: header v3, att_key_type 2 (ECDSA P-256), tee_type 0, Intel's QE vendor id,
qe_svn / pce_svn of the emulated QE / PCE; SGX report body with MRENCLAVE = workload
measurement (:func:`teeflow.workload.measurement`), MRSIGNER = SHA-256 of the emulated
signer key's raw ``x||y``, ATTRIBUTES flags 0x05 (INIT | MODE64BIT; DEBUG clear) and XFRM
0xe7, CPUSVN = the emulated TCB components; quote signature by the attestation key over
``header || body``; QE report (emulated QE MRENCLAVE / MRSIGNER, ISVPRODID 1, ISVSVN 8)
with REPORT_DATA = SHA-256(attestation_key || qe_auth_data) || 32 zero bytes, signed by the
PCK leaf key; 32 bytes of QE auth data; certification data type 5 = PEM chain (PCK leaf,
PCK CA, root).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.dcap.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    BODY_TYPE_SGX,
    INTEL_QE_VENDOR_ID,
    TEE_TYPE_SGX,
    Quote,
    QuoteHeader,
    QuoteSignatureData,
)
from teeflow.attestation.evidence import Evidence
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import PlatformError
from teeflow.platform.base import pad_report_data
from teeflow.platform.emulated_authority import (
    EMULATED_PCESVN,
    EMULATED_QE_ISVPRODID,
    EMULATED_QE_ISVSVN,
    EMULATED_QE_MRENCLAVE,
    ROOT_CN,
    AuthorityKeys,
    create_dir_atomically,
    generate_keys,
    load_keys,
    resolve_now,
    save_keys,
    sign_p256_raw,
    signer_mrsigner,
    teeflow_home,
)
from teeflow.platform.emulated_collateral import (
    CollateralFiles,
    collateral_from_files,
    make_collateral_files,
    read_collateral_dir,
    write_collateral_files,
)
from teeflow.platform.emulated_qe import enclave_report, qe_certification
from teeflow.workload.manifest import WorkloadManifest, measurement

__all__ = [
    "ENCLAVE_ATTRIBUTES",
    "WORKLOAD_MANIFEST_ENV",
    "EmulatedSgx",
    "EmulationAuthority",
    "emulated_sgx_quote",
]

#: Environment variable naming the "current workload" manifest (YAML path).
WORKLOAD_MANIFEST_ENV = "TEEFLOW_WORKLOAD_MANIFEST"
#: Workload enclave ATTRIBUTES: flags INIT|MODE64BIT (0x05, DEBUG clear), XFRM 0xe7.
ENCLAVE_ATTRIBUTES = (0x05).to_bytes(8, "little") + (0xE7).to_bytes(8, "little")
_COLLATERAL_SUBDIR = "collateral"


class EmulationAuthority:
    """Emulation root, PCK-like chain, signing keys and emulated collateral.

    Use :meth:`load_or_create` (persistent, ``$TEEFLOW_HOME/emulation``) or :meth:`generate`
    (in memory, for tests). Thread-safe.
    """

    def __init__(self, keys: AuthorityKeys, *, directory: Path | None = None) -> None:
        self._keys = keys
        self._directory = directory
        self._lock = threading.Lock()
        self._files: CollateralFiles | None = None
        self._collateral: IntelCollateral | None = None

    # -- construction -------------------------------------------------------------------

    @classmethod
    def generate(
        cls, now: datetime | None = None, *, rng: Callable[[int], bytes] = os.urandom
    ) -> EmulationAuthority:
        """A fresh in-memory authority; certificates valid from ``now`` - 1 day, 20 years."""
        return cls(generate_keys(resolve_now(now), rng))

    @classmethod
    def load_or_create(
        cls,
        home: Path | None = None,
        *,
        now: datetime | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> EmulationAuthority:
        """Load ``<home>/emulation`` or create it once (0700 dir, 0600 files, atomic).

        Args:
            home: teeflow home (default ``$TEEFLOW_HOME``, else ``~/.teeflow``).
            now: time used for a new authority and for the collateral freshness check;
                expired collateral is regenerated (keys kept) and rewritten.
            rng: source of serial numbers / PPID (keys come from the OS generator).

        Raises:
            PlatformError: the directory cannot be created/read or holds something else.
        """
        t = resolve_now(now)
        directory = teeflow_home(home) / "emulation"
        if not (directory / "authority.json").is_file():
            keys = generate_keys(t, rng)

            def populate(tmp: Path) -> None:
                save_keys(keys, tmp, t)
                write_collateral_files(make_collateral_files(keys, t), tmp / _COLLATERAL_SUBDIR)

            create_dir_atomically(directory, populate)
        authority = cls(load_keys(directory), directory=directory)
        authority.collateral_files(t)
        return authority

    @staticmethod
    def existing_trust_anchor(home: Path | None = None) -> TrustAnchor | None:
        """The emulation root of ``<home>/emulation`` as a trust anchor, without creating it.

        Returns ``None`` when no emulation authority exists there.

        Raises:
            PlatformError: the directory exists but its root certificate is unreadable or
                is not a teeflow emulation root.
        """
        path = teeflow_home(home) / "emulation" / "root_ca.pem"
        if not path.is_file():
            return None
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            raise PlatformError(f"cannot read emulation root {path}") from None
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if not cns or cns[0].value != ROOT_CN:
            raise PlatformError(f"{path} is not a teeflow emulation root")
        fp = cert.fingerprint(hashes.SHA256()).hex()
        return TrustAnchor(certificate=cert, name=f"{ROOT_CN} ({fp[:16]})", emulated=True)

    # -- identity ----------------------------------------------------------------------

    @property
    def keys(self) -> AuthorityKeys:
        """Private keys and certificates (handle with care: these sign evidence)."""
        return self._keys

    @property
    def directory(self) -> Path | None:
        """The emulation directory, or ``None`` for an in-memory authority."""
        return self._directory

    @property
    def root_certificate(self) -> x509.Certificate:
        """The self-signed emulation root CA."""
        return self._keys.root_ca

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the root certificate's DER, lower-case hex."""
        return self._keys.root_ca.fingerprint(hashes.SHA256()).hex()

    @property
    def mrsigner(self) -> bytes:
        """MRSIGNER of emulated workloads: SHA-256 of the signer key's raw ``x||y`` (32 bytes)."""
        return signer_mrsigner(self._keys.signer_key.public_key())

    def trust_anchor(self) -> TrustAnchor:
        """``TrustAnchor(certificate=root, name=..., emulated=True)``."""
        return TrustAnchor(
            certificate=self._keys.root_ca,
            name=f"{ROOT_CN} ({self.fingerprint[:16]})",
            emulated=True,
        )

    def sealing_secret(self) -> bytes:
        """The emulated platform's root sealing secret (32 bytes) — the stand-in for the CPU's
        fused sealing root (SGX "Root Seal Key"), from which the emulated sealing keys of
        :class:`teeflow.platform.sealing.EmulatedSealer` are derived per measurement.

        ``HKDF-SHA256(IKM = the root CA private scalar as 32 big-endian bytes,
        salt = b"teeflow-emulation-sealing-secret-v1", info = b"root sealing secret",
        L = 32)`` (RFC 5869). Deterministic for one authority (survives reloads of
        ``$TEEFLOW_HOME/emulation``); a different authority gives an unrelated secret.
        Never log or persist it.
        """
        scalar = self._keys.root_ca_key.private_numbers().private_value.to_bytes(32, "big")
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"teeflow-emulation-sealing-secret-v1",
            info=b"root sealing secret",
        ).derive(scalar)

    def pck_chain_pem(self) -> bytes:
        """PEM chain carried in quotes (certification data type 5): leaf, PCK CA, root."""
        k = self._keys
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (k.pck, k.pck_ca, k.root_ca)
        )

    # -- collateral --------------------------------------------------------------------

    def collateral_files(self, now: datetime | None = None) -> CollateralFiles:
        """The current collateral set, regenerated if stale at ``now`` (and persisted).

        Raises:
            PlatformError: ``now`` is outside the authority's certificate validity, or the
                emulation directory cannot be written.
        """
        t = resolve_now(now)
        with self._lock:
            files = self._files
            if files is None and self._directory is not None:
                files = read_collateral_dir(self._directory / _COLLATERAL_SUBDIR)
            if files is None or not files.fresh_at(t):
                files = make_collateral_files(self._keys, t)
                if self._directory is not None:
                    write_collateral_files(files, self._directory / _COLLATERAL_SUBDIR)
            if files is not self._files:
                self._files = files
                self._collateral = None
            return files

    def collateral(self, now: datetime | None = None) -> IntelCollateral:
        """Emulated collateral valid at ``now`` as :class:`IntelCollateral` (cached object).

        Raises:
            PlatformError: as :meth:`collateral_files`.
        """
        files = self.collateral_files(now)
        with self._lock:
            if self._collateral is None or self._files is not files:
                self._collateral = collateral_from_files(files, source="emulated")
            return self._collateral

    def write_collateral_dir(self, path: Path, now: datetime | None = None) -> Path:
        """Write the collateral files valid at ``now`` into ``path`` (``IntelCollateral.from_dir``
        / ``teeflow quote verify --collateral`` layout). Returns ``path``."""
        write_collateral_files(self.collateral_files(now), Path(path), private=False)
        return Path(path)


class EmulatedSgx:
    """Emulated SGX Attester producing real-format DCAP quote v3 (see module docstring).

    Args:
        authority: the emulation authority (default: :meth:`EmulationAuthority.load_or_create`).
        measurement: the workload's 32-byte measurement (MRENCLAVE), or
        manifest: a :class:`WorkloadManifest` whose :func:`measurement` is used; with
            neither, the manifest at ``$TEEFLOW_WORKLOAD_MANIFEST`` is loaded.
        isv_prod_id, isv_svn: ISVPRODID / ISVSVN of the workload (0..65535).
        rng: source of the QE auth data.

    Raises:
        PlatformError: no measurement available, both given, wrong length or SVN range.
        WorkloadError: the manifest named by the environment cannot be loaded.
    """

    def __init__(
        self,
        authority: EmulationAuthority | None = None,
        *,
        measurement: bytes | None = None,
        manifest: WorkloadManifest | None = None,
        isv_prod_id: int = 0,
        isv_svn: int = 0,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.measurement = _resolve_measurement(measurement, manifest)
        if not (0 <= isv_prod_id <= 0xFFFF and 0 <= isv_svn <= 0xFFFF):
            raise PlatformError("isv_prod_id and isv_svn must be in 0..65535")
        self.authority = authority if authority is not None else EmulationAuthority.load_or_create()
        self.isv_prod_id = isv_prod_id
        self.isv_svn = isv_svn
        self._rng = rng

    #: Attester protocol (teeflow.platform.base.Attester): the RCAR ``tee`` name.
    tee = "emulated-sgx"
    #: Attester protocol: the attester kind.
    kind = "emulated"

    def evidence(self, report_data: bytes) -> Evidence:
        """Attester protocol: :meth:`quote` as :class:`Evidence` (``emulated-sgx``).

        Raises:
            PlatformError: as :meth:`quote`.
        """
        return Evidence(self.tee, self.quote(report_data), self.kind)

    def quote(self, report_data: bytes) -> bytes:
        """Produce a signed DCAP quote v3 binding ``report_data`` (≤ 64 bytes, zero-padded).

        Raises:
            PlatformError: ``report_data`` is longer than 64 bytes or not bytes.
        """
        rd = pad_report_data(report_data)
        keys = self.authority.keys
        header = QuoteHeader(
            version=3,
            att_key_type=ATT_KEY_TYPE_ECDSA_P256,
            tee_type=TEE_TYPE_SGX,
            qe_svn=EMULATED_QE_ISVSVN,
            pce_svn=EMULATED_PCESVN,
            qe_vendor_id=INTEL_QE_VENDOR_ID,
            user_data=bytes(20),
        )
        body = enclave_report(
            attributes=ENCLAVE_ATTRIBUTES,
            mr_enclave=self.measurement,
            mr_signer=self.authority.mrsigner,
            isv_prod_id=self.isv_prod_id,
            isv_svn=self.isv_svn,
            report_data=rd,
        )
        att_pub, qe_data = qe_certification(
            keys,
            self.authority.pck_chain_pem(),
            qe_mrenclave=EMULATED_QE_MRENCLAVE,
            qe_isv_prod_id=EMULATED_QE_ISVPRODID,
            rng=self._rng,
        )
        signature = sign_p256_raw(keys.attestation_key, header.to_bytes() + body.to_bytes())
        quote = Quote(
            header=header,
            body=body,
            signature_data=QuoteSignatureData(signature, att_pub, qe_data, None),
            body_type=BODY_TYPE_SGX,
        )
        return quote.to_bytes()


def emulated_sgx_quote(
    report_data: bytes,
    *,
    authority: EmulationAuthority,
    measurement: bytes | None = None,
    manifest: WorkloadManifest | None = None,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
) -> tuple[bytes, bytes]:
    """One emulated SGX quote (``teeflow emulate quote``): ``(quote, MRENCLAVE)``.

    Arguments as :class:`EmulatedSgx` and :meth:`EmulatedSgx.quote`.

    Raises:
        PlatformError, WorkloadError: as :class:`EmulatedSgx`.
    """
    sgx = EmulatedSgx(
        authority,
        measurement=measurement,
        manifest=manifest,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
    )
    return sgx.quote(report_data), sgx.measurement


def _resolve_measurement(value: bytes | None, manifest: WorkloadManifest | None) -> bytes:
    if value is not None and manifest is not None:
        raise PlatformError("give either measurement= or manifest=, not both")
    if value is not None:
        if len(value) != 32:
            raise PlatformError(f"measurement must be 32 bytes, got {len(value)}")
        return bytes(value)
    if manifest is not None:
        return measurement(manifest)
    env = os.environ.get(WORKLOAD_MANIFEST_ENV)
    if env:
        return measurement(WorkloadManifest.load(env))
    raise PlatformError(
        "no workload measurement: pass measurement= or manifest=, "
        f"or set {WORKLOAD_MANIFEST_ENV} to a workload manifest"
    )
