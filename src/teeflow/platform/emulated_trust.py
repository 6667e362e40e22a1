"""Several sites under emulation: trust another site's emulation root by its certificate.

Each site's emulated workloads sign evidence with *their own* emulation authority
(``$TEEFLOW_HOME/emulation/``, private keys never leave it). A verifier at another site — a
party running ``teeflow kbs verify`` against the operator's emulated KBS, or the KBS
appraising a hospital's emulated clients — needs only that authority's **public** part:

- :func:`export_public` (``teeflow emulate export DIR``) writes the root certificate and the
  public collateral it signed (SGX and TDX: TCB Info, QE Identity, CRLs, issuer chains;
  valid :data:`~teeflow.platform.emulated_collateral.COLLATERAL_VALIDITY`, 30 days — export
  again after that);
- :func:`trust_public` (``teeflow emulate trust DIR``) checks that bundle (a self-signed
  teeflow emulation root; every issuer chain ends in it; bounded file sizes) and copies it to
  ``$TEEFLOW_HOME/emulation-trusted/<root SHA-256 prefix>/``;
- :func:`trusted_roots` lists what a home trusts, for the verifiers
  (:func:`teeflow.kbs.client.verification.verify_kbs`, :func:`teeflow.kbs.api.server.build_kbs`).

Everything here is EMULATED: a trusted emulation root is flagged ``emulated`` and its evidence
is refused unless the agreement says ``allow_emulated: true``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import PlatformError
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.emulated_authority import (
    ROOT_CN,
    atomic_write,
    is_emulation_root,
    resolve_now,
    teeflow_home,
)
from teeflow.platform.emulated_collateral import (
    COLLATERAL_FILES,
    CollateralFiles,
    read_collateral_dir,
    write_collateral_files,
)

__all__ = [
    "TRUSTED_SUBDIR",
    "TrustedEmulationRoot",
    "export_public",
    "trust_public",
    "trusted_roots",
]

#: Folder (under ``$TEEFLOW_HOME``) of the emulation roots this home trusts by certificate.
TRUSTED_SUBDIR = "emulation-trusted"
_ROOT_FILE = "root_ca.pem"
_MAX_FILE = 1 << 20
_TEES = ("sgx", "tdx")


@dataclass(frozen=True)
class TrustedEmulationRoot:
    """Another site's emulation root and its public collateral (module docstring).

    Attributes:
        anchor: the root as an emulated :class:`TrustAnchor`.
        collateral: ``"sgx"`` / ``"tdx"`` → that TEE's collateral files (either may be
            missing).
        directory: where the bundle is stored.
    """

    anchor: TrustAnchor
    collateral: dict[str, CollateralFiles]
    directory: Path

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the root certificate's DER, lower-case hex."""
        return self.anchor.certificate.fingerprint(hashes.SHA256()).hex()


def export_public(directory: Path, *, home: Path | None = None, now: datetime | None = None) -> str:
    """Write this home's emulation root certificate and public SGX/TDX collateral (valid at
    ``now``) into ``directory`` — never a private key. Returns the root's SHA-256 (hex).

    Raises:
        PlatformError: no emulation authority in ``home`` (nothing to export), or I/O errors.
    """
    from teeflow.platform.emulated_tdx import make_tdx_collateral_files

    t = resolve_now(now)
    if EmulationAuthority.existing_trust_anchor(home) is None:
        raise PlatformError(
            f"no emulation authority in {teeflow_home(home) / 'emulation'} to export: it is "
            "created by the first emulated workload or KBS (or `teeflow emulate info --create`)"
        )
    authority = EmulationAuthority.load_or_create(home, now=t)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlatformError(f"cannot create {directory}: {exc.strerror}") from None
    atomic_write(
        directory / _ROOT_FILE, authority.root_certificate.public_bytes(Encoding.PEM), 0o644
    )
    write_collateral_files(authority.collateral_files(t), directory / "sgx", private=False)
    write_collateral_files(
        make_tdx_collateral_files(authority.keys, t), directory / "tdx", private=False
    )
    return authority.fingerprint


def _read_root(path: Path) -> x509.Certificate:
    try:
        if path.stat().st_size > _MAX_FILE:
            raise PlatformError(f"{path} is larger than {_MAX_FILE} bytes")
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        raise PlatformError(
            f"cannot read an emulation root certificate at {path}: export one with "
            "`teeflow emulate export DIR` on the site whose root you want to trust"
        ) from None
    if not is_emulation_root(cert) or cert.issuer != cert.subject:
        raise PlatformError(f"{path} is not a teeflow emulation root ({ROOT_CN})")
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):
        raise PlatformError(f"{path}: the root is not validly self-signed") from None
    return cert


def _read_collateral(directory: Path, root: x509.Certificate) -> CollateralFiles | None:
    if not directory.is_dir():
        return None
    for name in COLLATERAL_FILES:
        p = directory / name
        if not p.is_file() or p.stat().st_size > _MAX_FILE:
            raise PlatformError(f"{p} is missing or larger than {_MAX_FILE} bytes")
    files = read_collateral_dir(directory)
    if files is None:
        raise PlatformError(f"{directory} does not hold readable emulated collateral")
    root_der = root.public_bytes(Encoding.DER)
    for chain_name in ("tcb_info_issuer_chain.pem", "pck_crl_issuer_chain.pem"):
        try:
            chain = x509.load_pem_x509_certificates(files.files[chain_name])
        except ValueError:
            raise PlatformError(f"{directory / chain_name} is not a PEM chain") from None
        if not chain or chain[-1].public_bytes(Encoding.DER) != root_der:
            raise PlatformError(
                f"{directory / chain_name} does not end in the bundle's root certificate"
            )
    return files


def _load_bundle(directory: Path) -> TrustedEmulationRoot:
    root = _read_root(directory / _ROOT_FILE)
    collateral = {}
    for tee in _TEES:
        files = _read_collateral(directory / tee, root)
        if files is not None:
            collateral[tee] = files
    if not collateral:
        raise PlatformError(f"{directory} holds no sgx/ or tdx/ collateral")
    fp = root.fingerprint(hashes.SHA256()).hex()
    anchor = TrustAnchor(certificate=root, name=f"{ROOT_CN} ({fp[:16]}, trusted)", emulated=True)
    return TrustedEmulationRoot(anchor, collateral, directory)


def trust_public(
    bundle: Path, *, home: Path | None = None, now: datetime | None = None
) -> TrustedEmulationRoot:
    """Check an exported bundle (:func:`export_public`) and store it under
    ``<home>/emulation-trusted/<fingerprint[:16]>/`` (replacing an older copy of the same
    root, e.g. with renewed collateral).

    Raises:
        PlatformError: not a bundle (missing/oversized files, not a self-signed emulation
            root, an issuer chain ending elsewhere), the bundle holds a private key, the
            collateral expired at ``now``, the root is this home's own (nothing to trust),
            or I/O errors.
    """
    t = resolve_now(now)
    if any(bundle.glob("*.key.pem")) or any(bundle.rglob("*key*.pem")):
        raise PlatformError(
            f"{bundle} holds private keys: give only what `teeflow emulate export` writes "
            "(never a copy of an emulation/ folder)"
        )
    loaded = _load_bundle(bundle)
    if not any(f.issue_date <= t < f.next_update for f in loaded.collateral.values()):
        raise PlatformError(
            f"the collateral in {bundle} expired: export it again at its site "
            "(`teeflow emulate export DIR`)"
        )
    own = EmulationAuthority.existing_trust_anchor(home)
    if own is not None and own.certificate == loaded.anchor.certificate:
        raise PlatformError("that is this home's own emulation root: nothing to trust")
    target = teeflow_home(home) / TRUSTED_SUBDIR / loaded.fingerprint[:16]
    try:
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True, mode=0o755)
        atomic_write(
            target / _ROOT_FILE, loaded.anchor.certificate.public_bytes(Encoding.PEM), 0o644
        )
        for tee, files in loaded.collateral.items():
            write_collateral_files(files, target / tee, private=False)
    except OSError as exc:
        raise PlatformError(f"cannot write {target}: {exc.strerror}") from None
    return _load_bundle(target)


def trusted_roots(home: Path | None = None) -> list[TrustedEmulationRoot]:
    """The emulation roots ``home`` trusts by certificate (sorted by fingerprint).

    Raises:
        PlatformError: a stored bundle is damaged (remove it or trust it again).
    """
    base = teeflow_home(home) / TRUSTED_SUBDIR
    if not base.is_dir():
        return []
    return [_load_bundle(d) for d in sorted(base.iterdir()) if d.is_dir()]
