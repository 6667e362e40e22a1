"""A party verifies the KBS before trusting it: fresh evidence over the TLS connection it
will pin (``teeflow kbs verify``).

:func:`verify_kbs` fetches ``/v1/kbs/evidence`` with a fresh 32-byte nonce, records the TLS
key the connection saw, verifies the evidence
(:func:`teeflow.kbs.service.self_attestation.verify_kbs_evidence`: the KBS's TEE evidence, its
reference values from the agreement, the binding of the TLS, HPKE, CA, EAR and audit keys to
the nonce) and returns the :class:`~teeflow.kbs.client.pinning.Pin` that
:class:`~teeflow.kbs.client.sdk.KbsClient` then talks to.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from teeflow.errors import KbsError
from teeflow.kbs.client.pinning import Pin, fetch_kbs_evidence

if TYPE_CHECKING:
    from teeflow.attestation.trust import TrustAnchor
    from teeflow.kbs.policy.kbs_reference import AnyKbsReferenceValues
    from teeflow.kbs.service.collateral import CollateralProvider, SnpEndorsementProvider

__all__ = ["NO_EMULATION_ROOT", "verify_kbs"]

#: What to do when an emulated KBS is verified without any emulation root at hand.
NO_EMULATION_ROOT = (
    "no emulation root in $TEEFLOW_HOME to verify an emulated KBS: on the KBS operator's "
    "machine run `teeflow emulate export DIR`, bring DIR here (public certificate and "
    "collateral only) and run `teeflow emulate trust DIR` (docs/emulation.md); never copy "
    "an emulation/ folder, it holds private keys"
)
_LOG = logging.getLogger(__name__)


def verify_kbs(
    url: str,
    reference_values: AnyKbsReferenceValues,
    allow_emulated: bool = False,
    *,
    anchors: list[TrustAnchor] | None = None,
    collateral: CollateralProvider | None = None,
    home: Path | None = None,
    expected_agreement_digest: bytes | None = None,
    now: datetime | None = None,
    rng: Callable[[int], bytes] = os.urandom,
    timeout: float = 10.0,
    snp_endorsements: SnpEndorsementProvider | None = None,
) -> Pin:
    """Verify the KBS at ``url`` and return its :class:`Pin` (module docstring).

    Args:
        url: ``https://host:port``.
        reference_values: the KBS reference values, per platform (the agreement's
            ``workloads.kbs``: :func:`teeflow.kbs.policy.kbs_reference.load_reference_values`)
            or one platform's values; the KBS's evidence is appraised against the values of
            its TEE (SGX, TDX or SNP).
        allow_emulated: accept an emulated KBS: its root must be this home's emulation
            authority (``$TEEFLOW_HOME/emulation``) or a root trusted by certificate
            (``teeflow emulate trust``: :mod:`teeflow.platform.emulated_trust`), unless
            ``anchors``/``collateral`` are given.
        anchors, collateral: override the trust anchors (default Intel SGX Root CA, plus the
            emulation roots of SGX/TDX and SNP when allowed; AMD's ARKs are always trusted
            for SNP) and the collateral provider (default: emulated collateral when
            allowed, else none — hardware SGX/TDX needs collateral).
        snp_endorsements: VCEK/VLEK source for SNP evidence without a certificate table.
        home: teeflow home of the emulation authority.
        expected_agreement_digest: require the KBS to enforce this agreement.
        now: verification time (default: the wall clock).
        rng: nonce source (32 bytes).
        timeout: per-request timeout (seconds).

    Raises:
        KbsError: transport failure, or no emulation authority for ``allow_emulated``.
        ParseError, VerificationError, PolicyViolation: as
            :func:`teeflow.kbs.service.self_attestation.verify_kbs_evidence`.
    """
    from teeflow.attestation.trust import intel_sgx_root_ca
    from teeflow.kbs.service.collateral import (
        CollateralProvider as _Provider,
    )
    from teeflow.kbs.service.collateral import (
        CompositeCollateralProvider,
        EmulatedCollateralProvider,
        TrustedEmulationCollateralProvider,
    )
    from teeflow.kbs.service.self_attestation import MAX_EVIDENCE_BYTES, verify_kbs_evidence
    from teeflow.platform.emulated import EmulationAuthority
    from teeflow.platform.emulated_trust import trusted_roots

    when = now if now is not None else datetime.now(UTC)
    base = url.rstrip("/")
    trusted = list(anchors) if anchors is not None else [intel_sgx_root_ca()]
    provider = collateral
    if allow_emulated and (anchors is None or collateral is None):
        roots = trusted_roots(home)
        own = EmulationAuthority.existing_trust_anchor(home) is not None
        if not own and not roots:
            raise KbsError(NO_EMULATION_ROOT)
        providers: list[_Provider] = [TrustedEmulationCollateralProvider(r) for r in roots]
        if anchors is None:
            trusted += [r.anchor for r in roots]
        if own:
            authority = EmulationAuthority.load_or_create(home, now=when)
            if anchors is None:
                trusted.append(authority.trust_anchor())
            providers.append(EmulatedCollateralProvider(authority))
        if provider is None:
            provider = CompositeCollateralProvider(providers)
    if provider is None:
        provider = CompositeCollateralProvider([])
    nonce = rng(32)
    body, observed = fetch_kbs_evidence(base, nonce, timeout=timeout, limit=MAX_EVIDENCE_BYTES)
    if allow_emulated and anchors is None and b'"emulated-snp"' in body:
        # the emulated SNP root is loaded only for (claimed) emulated SNP evidence: loading it
        # costs about a second; the claim decides nothing else (verification checks it)
        from teeflow.platform.emulated_snp import emulated_snp_anchor

        trusted.append(emulated_snp_anchor(home, now=when))
    verified = verify_kbs_evidence(
        body,
        nonce=nonce,
        reference_values=reference_values,
        allow_emulated=allow_emulated,
        anchors=trusted,
        collateral=provider,
        now=when,
        observed_tls_spki=observed,
        expected_agreement_digest=expected_agreement_digest,
        snp_endorsements=snp_endorsements,
    )
    if verified.emulated:
        _LOG.warning("the KBS at %s runs on an EMULATED TEE (no hardware protection)", base)
    b = verified.bundle
    return Pin(
        url=base,
        federation=b["federation"],
        tls_spki_sha256=b["tls_spki_sha256"],
        hpke_public_key=b["hpke_public_key"],
        ca_certificate=b["ca_certificate"],
        ear_public_jwk=b["ear_public_jwk"],
        audit_public_key=b["audit_public_key"],
        agreement_digest=None
        if verified.agreement_digest is None
        else verified.agreement_digest.hex(),
        measurement=verified.measurement,
        tee=verified.tee,
        emulated=verified.emulated,
        verified_at=when.astimezone(UTC),
    )
