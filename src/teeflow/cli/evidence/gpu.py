"""``quote show|verify`` for NVIDIA H100 GPU evidence (SPDM 1.1 measurement transcripts).

Two wire shapes (:func:`teeflow.attestation.detect.detect_evidence`):

* Trustee hex text of one transcript; its PEM device chain comes from ``--certs``;
* nvtrust JSON list (one self-contained object per GPU; ``--certs`` not used);
* Trustee JSON (``{"device_evidence_list": [...]}`` or RCAR additional evidence
  ``{"nvidia": ...}``; Hopper and Blackwell; ``--certs`` not used).

Each GPU: :func:`teeflow.attestation.nvidia.verify` (SPDM ECDSA P-384 signature, chain to the
pinned NVIDIA Device Identity CA, FWID) → :func:`teeflow.attestation.nvidia.appraise_gpu` with
a ``GpuPolicy`` (``--policy`` file; ``--nonce HEX`` pins the verifier nonce;
``--allow-emulated``). The nonce is checked by the policy, so a wrong nonce leaves
``verified`` true and makes ``accepted`` false with a violation. For several GPUs the
result is verified / accepted only when every GPU is; ``gpus`` lists each one.
"""

from __future__ import annotations

from typing import Any

from teeflow.cli.evidence.common import Options, Outcome, read_file
from teeflow.errors import Error, ParseError

__all__ = ["gpu_fields", "load_gpu_evidence", "verify_gpu"]


def load_gpu_evidence(data: bytes, kind: str, certs: Any) -> tuple[Any, ...]:
    """The ``GpuEvidence`` items of a file of kind ``nvidia-spdm-hex``, ``nvidia-nvtrust-json``
    or ``nvidia-trustee-json``.

    Raises:
        ParseError: malformed evidence, or the hex form without ``--certs``.
    """
    from teeflow.attestation.nvidia import load_nvtrust_evidence, load_trustee_evidence

    if kind == "nvidia-nvtrust-json":
        if certs is not None:
            raise ParseError("nvtrust JSON carries its own certificate chains; omit --certs")
        return load_nvtrust_evidence(data)
    if kind == "nvidia-trustee-json":
        from teeflow.attestation.nvidia.trustee import load_trustee_json

        if certs is not None:
            raise ParseError("Trustee JSON carries its own certificate chains; omit --certs")
        return load_trustee_json(data)
    if certs is None:
        raise ParseError("NVIDIA SPDM hex evidence needs --certs (the device PEM chain)")
    return (load_trustee_evidence(data, read_file(certs, "certificate chain", 64 * 1024)),)


def gpu_fields(ev: Any) -> dict[str, Any]:
    """The ``quote show`` fields of one GPU's evidence (signed values and declared metadata)."""
    t = ev.transcript
    opaque = t.response.opaque
    return {
        "tee": "nvidia-gpu",
        "source": ev.source,
        "spdm_version": f"{t.request.version:#x}",
        "nonce": t.request.nonce.hex(),
        "slot": t.request.slot_id,
        "measurement_blocks": t.response.number_of_blocks,
        "measurements_digest": t.response.measurements_digest.hex(),
        "evidence_digest": ev.evidence_digest.hex(),
        "arch": ev.declared_arch,
        "driver_version": opaque.driver_version if opaque is not None else None,
        "vbios_version": opaque.vbios_version if opaque is not None else None,
        "fwid": opaque.fwid.hex() if opaque is not None and opaque.fwid is not None else None,
        "transcript_bytes": len(t.raw),
    }


def _gpu_policy(opts: Options) -> Any:
    from teeflow.attestation.nvidia import GpuPolicy

    policy = GpuPolicy.from_file(opts.policy_file) if opts.policy_file else GpuPolicy()
    if opts.nonce is not None:
        try:
            nonce = bytes.fromhex(opts.nonce)
        except ValueError:
            raise ParseError("--nonce must be hex") from None
        if len(nonce) != 32:
            raise ParseError("--nonce must be 32 bytes (64 hex digits)")
        policy = policy.with_nonce(nonce)
    if opts.allow_emulated:
        policy = policy.model_copy(update={"allow_emulated": True})
    return policy


def _one(ev: Any, opts: Options, policy: Any) -> dict[str, Any]:
    from teeflow.attestation.nvidia import appraise_gpu, verify

    fields = gpu_fields(ev)
    entry: dict[str, Any] = {
        "source": ev.source,
        "verified": False,
        "accepted": False,
        "status": None,
        "emulated": False,
        "arch": fields["arch"],
        "fwid": fields["fwid"],
        "driver_version": fields["driver_version"],
        "vbios_version": fields["vbios_version"],
        "nonce": fields["nonce"],
        "evidence_digest": fields["evidence_digest"],
        "errors": [],
    }
    try:
        v = verify(ev, now=opts.at)
    except Error as exc:
        entry["errors"].append(f"{exc.code}: {exc}")
        return entry
    entry.update(
        verified=True,
        emulated=v.emulated,
        arch=v.arch,
        fwid=v.fwid.digest.hex(),
        driver_version=v.driver_version,
        vbios_version=v.vbios_version,
    )
    result = appraise_gpu(v, policy)
    entry.update(accepted=result.accepted, status=str(result.status), tee=result.tee)
    entry["errors"].extend(f"policy: {x}" for x in result.violations)
    return entry


def _common(entries: list[dict[str, Any]], key: str) -> Any:
    values = {e[key] for e in entries}
    return values.pop() if len(values) == 1 else None


_STATUS_ORDER = ("affirming", "warning", "contraindicated")


def verify_gpu(data: bytes, kind: str, opts: Options) -> Outcome:
    """Verify and appraise GPU evidence (never raises for evidence problems)."""
    policy = _gpu_policy(opts)
    out = Outcome()
    try:
        items = load_gpu_evidence(data, kind, opts.certs)
    except ParseError as exc:
        out.errors.append(f"parse: {exc}")
        return out
    entries = [_one(ev, opts, policy) for ev in items]
    out.fields = {"tee": "nvidia-gpu", "report_data": None}
    out.verified = all(e["verified"] for e in entries)
    out.accepted = out.verified and all(e["accepted"] for e in entries)
    out.emulated = any(e["emulated"] for e in entries)
    statuses = [e["status"] for e in entries if e["status"] is not None]
    if statuses and out.verified:
        out.status = max(statuses, key=_STATUS_ORDER.index)
        out.tee = _common(entries, "tee")
    for e in entries:
        prefix = f"{e['source']}: " if len(entries) > 1 else ""
        out.errors.extend(prefix + err for err in e["errors"])
    out.extra = {
        "arch": _common(entries, "arch"),
        "fwid": _common(entries, "fwid"),
        "driver_version": _common(entries, "driver_version"),
        "vbios_version": _common(entries, "vbios_version"),
        "nonce": _common(entries, "nonce"),
    }
    if kind in ("nvidia-nvtrust-json", "nvidia-trustee-json"):
        for e in entries:
            e.pop("tee", None)
        out.extra["gpus"] = entries
    return out
