"""End-to-end attestation round trip on the emulated TEE, in one process.

The roles of the DESIGN's trust flow, in miniature (no network yet — the KBS service is a
later component):

1. A *data owner* seals a dataset under a fresh data key (sealed blob) and wraps the data
   key to the *verifier*'s HPKE key (RFC 9180).
2. A *workload*, measured from its manifest, creates an ephemeral P-256 key and binds the
   verifier's nonce and that key into REPORT_DATA (RCAR binding), then gets an Intel DCAP v3
   quote from the emulated SGX platform.
3. The *verifier* parses, verifies (PCK chain, QE report, TCB Info, QE Identity, CRLs) and
   appraises the quote against reference values (the measurement) and the expected binding,
   issues an EAR attestation result, and — only then — releases the data key as a JWE
   (ECDH-ES+A256KW / A256GCM) to the attested key.
4. The workload decrypts the key and unseals the dataset; the demo checks the plaintext
   digest. It also shows that the default policy denies emulated evidence.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc import jwe
from joserfc.jwk import ECKey

from teeflow.attestation.binding import runtime_data_digest
from teeflow.attestation.ear import generate_ear_signing_key, issue_ear, verify_ear
from teeflow.attestation.sgx import appraise, parse_quote, verify
from teeflow.attestation.sgx.policy import SgxPolicy
from teeflow.attestation.trust import intel_sgx_root_ca
from teeflow.errors import PolicyViolation, VerificationError
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.selection import attester_for
from teeflow.sealing import seal, unseal, unwrap_key, wrap_key
from teeflow.workload.manifest import WorkloadManifest, measurement

__all__ = ["DemoStep", "DemoSummary", "run_attestation_demo"]

_WRAP_INFO = b"teeflow demo data key v1"
_DEMO_WORKLOAD = '''"""teeflow demo workload: computes column means of the owner's sealed table."""
import numpy as np


def run(table: np.ndarray) -> np.ndarray:
    return table.mean(axis=0)
'''


@dataclass(frozen=True)
class DemoStep:
    """One step of the demo: a title, whether it succeeded, seconds taken, a detail line."""

    title: str
    ok: bool
    seconds: float
    detail: str


@dataclass
class DemoSummary:
    """What the demo did and where it left its files (``--json`` prints it)."""

    workdir: str
    measurement: str = ""
    tcb_status: str | None = None
    ear_status: str | None = None
    default_policy_denied: bool = False
    verified: bool = False
    accepted: bool = False
    key_released: bool = False
    data_recovered: bool = False
    wall_seconds: float = 0.0
    steps: list[DemoStep] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every stage succeeded and the default policy denied emulation."""
        return (
            self.verified
            and self.accepted
            and self.key_released
            and self.data_recovered
            and self.default_policy_denied
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable view."""
        return {
            "ok": self.ok,
            "workdir": self.workdir,
            "measurement": self.measurement,
            "tcb_status": self.tcb_status,
            "ear_status": self.ear_status,
            "verified": self.verified,
            "accepted": self.accepted,
            "default_policy_denied_emulated": self.default_policy_denied,
            "key_released": self.key_released,
            "data_recovered": self.data_recovered,
            "wall_seconds": round(self.wall_seconds, 3),
            "steps": [s.__dict__ for s in self.steps],
            "files": self.files,
            "emulated": True,
        }


def _write_workload(workdir: Path) -> WorkloadManifest:
    app = workdir / "workload"
    app.mkdir(parents=True, exist_ok=True)
    (app / "stats.py").write_text(_DEMO_WORKLOAD)
    manifest = WorkloadManifest.build(app, entrypoint=["python", "stats.py"], files=["stats.py"])
    (workdir / "workload.manifest.yaml").write_text(manifest.to_yaml())
    return manifest


def run_attestation_demo(
    workdir: Path,
    *,
    now: datetime | None = None,
    rng: Callable[[int], bytes] = os.urandom,
    on_step: Callable[[DemoStep], None] | None = None,
) -> DemoSummary:
    """Run the round trip in ``workdir`` (created; the emulation authority lives there).

    Args:
        workdir: directory for every artefact (manifest, quote, collateral, sealed data).
        now: verification time (UTC); default: the current time.
        rng: randomness source (bytes of the requested length).
        on_step: callback after each step (for progress display).

    Returns:
        A :class:`DemoSummary`; ``summary.ok`` tells whether every stage passed.

    Raises:
        teeflow.errors.Error: an unexpected failure of a stage (each is reported as a step).
    """
    start = time.perf_counter()
    when = now or datetime.now(UTC)
    workdir.mkdir(parents=True, exist_ok=True)
    summary = DemoSummary(workdir=str(workdir))

    def step(title: str, t0: float, detail: str, ok: bool = True) -> None:
        s = DemoStep(title, ok, time.perf_counter() - t0, detail)
        summary.steps.append(s)
        if on_step:
            on_step(s)

    # 1. data owner: seal a table, wrap the data key to the verifier's HPKE key.
    t0 = time.perf_counter()
    verifier_hpke = X25519PrivateKey.generate()
    table = np.random.default_rng(7).normal(size=(1000, 8)).astype(np.float32)
    plaintext = table.tobytes()
    data_key = rng(32)
    sealed = seal(plaintext, data_key, aad=b"demo-table")
    wrapped = wrap_key(data_key, verifier_hpke.public_key(), info=_WRAP_INFO)
    (workdir / "table.sealed").write_bytes(sealed)
    summary.files["sealed_data"] = str(workdir / "table.sealed")
    step("data owner seals its table", t0, f"{len(plaintext)} B -> {len(sealed)} B sealed")

    # 2. workload: measure, bind nonce + ephemeral key, get an emulated quote.
    t0 = time.perf_counter()
    manifest = _write_workload(workdir)
    mr = measurement(manifest)
    summary.measurement = mr.hex()
    summary.files["manifest"] = str(workdir / "workload.manifest.yaml")
    authority = EmulationAuthority.load_or_create(workdir / "home", now=when)
    summary.files["emulation_root"] = str(workdir / "home" / "emulation")
    nonce = base64.b64encode(rng(32)).decode()
    tee_key = ECKey.generate_key("P-256", private=True)
    tee_pubkey = tee_key.as_dict(private=False)
    binding = runtime_data_digest(tee_pubkey=tee_pubkey, nonce=nonce)
    attester = attester_for("emulated-sgx", measurement=mr, authority=authority)
    quote_bytes = attester.evidence(binding).primary
    (workdir / "quote.bin").write_bytes(quote_bytes)
    collateral_dir = workdir / "collateral"
    authority.write_collateral_dir(collateral_dir, now=when)
    summary.files["quote"] = str(workdir / "quote.bin")
    summary.files["collateral"] = str(collateral_dir)
    step(
        "workload attests (EMULATED SGX)",
        t0,
        f"MRENCLAVE {mr.hex()[:16]}…, quote {len(quote_bytes)} B",
    )

    # 3. verifier: parse -> verify -> appraise -> EAR.
    t0 = time.perf_counter()
    quote = parse_quote(quote_bytes)
    verified = verify(
        quote,
        anchors=[intel_sgx_root_ca(), authority.trust_anchor()],
        collateral=authority.collateral(when),
        now=when,
    )
    summary.verified = True
    summary.tcb_status = str(verified.tcb_status)
    step(
        "verifier verifies the quote",
        t0,
        f"PCK chain, QE, TCB Info, QE Identity ok; TCB {verified.tcb_status}",
    )

    t0 = time.perf_counter()
    denied = appraise(verified, SgxPolicy(mrenclaves=(mr.hex(),)))
    summary.default_policy_denied = (not denied.accepted) and any(
        "emulated" in v for v in denied.violations
    )
    step(
        "default policy denies emulated evidence",
        t0,
        "; ".join(denied.violations),
        summary.default_policy_denied,
    )

    t0 = time.perf_counter()
    policy = SgxPolicy(mrenclaves=(mr.hex(),), report_data=binding.hex(), allow_emulated=True)
    result = appraise(verified, policy)
    if not result.accepted:
        raise PolicyViolation("demo policy rejected the evidence", list(result.violations))
    summary.accepted = True
    ear_key = generate_ear_signing_key()
    token = issue_ear(result, signing_key=ear_key, nonce=nonce, now=when)
    ear = verify_ear(token, ear_key, now=when, nonce=nonce)
    summary.ear_status = str(ear.status)
    (workdir / "ear.jwt").write_text(token)
    summary.files["ear"] = str(workdir / "ear.jwt")
    step(
        "verifier appraises (allow_emulated) and issues an EAR",
        t0,
        f"ear.status {summary.ear_status}",
    )

    # 4. release the data key to the attested key only; the workload unseals.
    t0 = time.perf_counter()
    released_key = unwrap_key(wrapped, verifier_hpke, info=_WRAP_INFO)
    attested_pub = ECKey.import_key(tee_pubkey)
    token_jwe = jwe.encrypt_compact(
        {"alg": "ECDH-ES+A256KW", "enc": "A256GCM"}, released_key, attested_pub
    )
    summary.key_released = True
    got_key = jwe.decrypt_compact(token_jwe, tee_key).plaintext
    if got_key is None:
        raise VerificationError("released key JWE had no payload")
    recovered = unseal((workdir / "table.sealed").read_bytes(), got_key, aad=b"demo-table")
    summary.data_recovered = (
        hashlib.sha256(recovered).digest() == hashlib.sha256(plaintext).digest()
    )
    means = np.frombuffer(recovered, dtype=np.float32).reshape(table.shape).mean(axis=0)
    step(
        "key released to the attested key; workload unseals",
        t0,
        "column means[0:3] = " + ", ".join(f"{m:+.4f}" for m in means[:3]),
        summary.data_recovered,
    )

    summary.wall_seconds = time.perf_counter() - start
    return summary
