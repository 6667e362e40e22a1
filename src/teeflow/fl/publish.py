"""Publishing a compute package: seal it, upload its key and the session checkpoint key.

``teeflow package publish pkg.tar --kbs URL --pin FILE --party NAME`` (:func:`publish_package`):

1. the package digest ``d = SHA-256(archive)`` must be a package of the KBS's current agreement
   whose readers include the publishing party (the grant's owner);
2. the archive is sealed (:func:`seal_package`) under a fresh 32-byte package key with
   associated data ``b"teeflow-fl-package/1\\0" || d`` — so a different archive sealed under
   the same key for the same digest still fails the client's digest check, and a blob for
   another digest does not open — and written next to the archive (``pkg.tar.sealed``);
3. two KBS resources are uploaded (HPKE-wrapped to the KBS key, owner-signed grants):
   :func:`package_key_path` ``fl/package-key/<d>`` — roles ``[client]``, packages ``[d]``,
   functions ``[train]``: only attested client workloads that claim this package get it; and
   :func:`checkpoint_key_path` ``fl/checkpoint-key/<d>`` — roles ``[aggregator]``, packages
   ``[d]``, recipients = ``outputs.model``: the key aggregators seal checkpoints under.

Clients claim ``{party, package_digest: d, function: "train", resources: [package key path]}``;
the aggregator claims ``{package_digest: d, resources: [checkpoint key path], recipients:
outputs.model}``. Both paths derive from the digest, so no other configuration is needed.
Publishing again rotates both keys: the previous sealed archive and the session checkpoints
made under the previous checkpoint key no longer open.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from teeflow.errors import FLError, VerificationError
from teeflow.fl.package import package_digest
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.policy.agreement import FederationAgreement, OutputKind, digest
from teeflow.kbs.policy.grants import Grant, new_grant_id, sign_grant
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.sealing import generate_key, seal, unseal

__all__ = [
    "CLIENT_FUNCTION",
    "PACKAGE_AAD_PREFIX",
    "PublishedPackage",
    "checkpoint_key_path",
    "choose_package",
    "fetch_resource",
    "open_package",
    "package_key_path",
    "publish_package",
    "seal_package",
]

PACKAGE_AAD_PREFIX = b"teeflow-fl-package/1\0"
#: Function the clients claim (the grant allows only it).
CLIENT_FUNCTION = "train"


def package_key_path(digest_hex: str) -> str:
    """KBS resource path of a package key: ``fl/package-key/<digest>``."""
    return f"fl/package-key/{digest_hex.lower()}"


def checkpoint_key_path(digest_hex: str) -> str:
    """KBS resource path of the checkpoint key for a package: ``fl/checkpoint-key/<digest>``."""
    return f"fl/checkpoint-key/{digest_hex.lower()}"


def fetch_resource(kbs: KbsClient, path: str, *, attempts: int = 5) -> bytes:
    """``kbs.get_resource(path)``, retried on :class:`~teeflow.kbs.api.problems.PolicyDeny` up to
    ``attempts`` times with a short random back-off (0.05..0.5 s): the KBS answers a release
    that lost a race on the release counter (several workloads fetching the same key at
    once) with the same PolicyDeny as a real refusal, which then persists.

    Raises:
        PolicyDeny: still refused after the last attempt; other KbsError as get_resource.
    """
    import random
    import time

    from teeflow.kbs.api.problems import PolicyDeny

    for attempt in range(1, attempts + 1):
        try:
            return kbs.get_resource(path)
        except PolicyDeny:
            if attempt == attempts:
                raise
            time.sleep(random.uniform(0.05, 0.5))  # noqa: S311 - jitter, not a secret
    raise AssertionError("unreachable")  # pragma: no cover


def seal_package(archive: bytes, key: bytes) -> bytes:
    """Seal a package archive (module docstring, step 2)."""
    return seal(archive, key, aad=PACKAGE_AAD_PREFIX + package_digest(archive))


def open_package(sealed: bytes, key: bytes, expected_digest: bytes) -> bytes:
    """Unseal a package and check its digest against the attested one.

    Raises:
        SealingError: tampered blob, wrong key, or sealed for another digest.
        VerificationError: the archive's digest is not ``expected_digest``.
    """
    archive = unseal(sealed, key, aad=PACKAGE_AAD_PREFIX + expected_digest)
    if package_digest(archive) != expected_digest:
        raise VerificationError("package digest does not match the attested digest")
    return archive


def choose_package(agreement: FederationAgreement, wanted: str | None = None) -> tuple[str, str]:
    """``(name, digest hex)`` of the session's package: ``wanted`` (a name or a digest), else
    the agreement's only package with a ``train`` entrypoint.

    Raises:
        FLError: no such package, or several and none chosen.
    """
    if wanted:
        found = agreement.package_by_digest(wanted) if len(wanted) == 64 else None
        if found is None and wanted in agreement.packages:
            found = (wanted, agreement.packages[wanted])
        if found is None:
            raise FLError(f"package {wanted[:64]!r} is not in the agreement")
        return found[0], found[1].digest
    trainable = [(n, s) for n, s in sorted(agreement.packages.items()) if "train" in s.entrypoints]
    if len(trainable) != 1:
        raise FLError(
            f"the agreement has {len(trainable)} packages with a train entrypoint: name one"
        )
    return trainable[0][0], trainable[0][1].digest


@dataclass(frozen=True)
class PublishedPackage:
    """Result of :func:`publish_package`."""

    name: str
    digest: str
    sealed_path: Path
    package_key_path: str
    checkpoint_key_path: str


def publish_package(
    archive_path: Path,
    kbs: KbsClient,
    owner: PartyKeys,
    *,
    sealed_path: Path | None = None,
    lifetime: timedelta = timedelta(days=30),
    max_releases: int = 100_000,
    now: datetime | None = None,
) -> PublishedPackage:
    """Seal ``archive_path`` and upload its key and the checkpoint key (module docstring).

    Args:
        archive_path: the package archive (``teeflow package build``).
        kbs: a client of the verified KBS (pinned).
        owner: the publishing party's keys (a reader of the package, data- or model-owner).
        sealed_path: where to write the sealed archive (default ``<archive>.sealed``).
        lifetime: grant validity from ``now``.
        max_releases: release budget of each grant.
        now: grant creation time (default: the wall clock).

    Raises:
        FLError: no agreement at the KBS, or the package is not in it.
        KbsError subclasses: the KBS refused an upload (grant, signature, conflict).
    """
    try:
        archive = Path(archive_path).read_bytes()
    except OSError as exc:
        raise FLError(f"cannot read {archive_path}: {exc.strerror or exc}") from None
    signed = kbs.current_agreement()
    if signed is None:
        raise FLError("the KBS has no agreement yet")
    agreement = signed.agreement
    d = package_digest(archive).hex()
    found = agreement.package_by_digest(d)
    if found is None:
        raise FLError(f"package {d} is not in the agreement (build it from the agreed folder)")
    when = (now or datetime.now(UTC)).astimezone(UTC)
    key = generate_key()
    out = Path(sealed_path) if sealed_path is not None else Path(f"{archive_path}.sealed")
    try:
        out.write_bytes(seal_package(archive, key))
    except OSError as exc:
        raise FLError(f"cannot write {out}: {exc.strerror or exc}") from None
    agreement_hex = digest(agreement).hex()
    recipients = sorted(agreement.outputs.get(OutputKind.MODEL, ()))

    def grant(path: str, role: str, functions: list[str], recips: list[str]) -> None:
        g = Grant.from_mapping(
            {
                "id": new_grant_id(),
                "resource": path,
                "owner": owner.name,
                "agreement": agreement_hex,
                "roles": [role],
                "packages": [d],
                "functions": functions,
                "recipients": recips,
                "created_at": (when - timedelta(seconds=60)).isoformat(),
                "not_after": (when + lifetime).isoformat(),
                "max_releases": max_releases,
            }
        )
        secret = generate_key() if role == "aggregator" else key
        kbs.put_resource(path, secret, sign_grant(g, owner), owner)

    grant(package_key_path(d), "client", [CLIENT_FUNCTION], [])
    grant(checkpoint_key_path(d), "aggregator", [], recipients)
    return PublishedPackage(found[0], d, out, package_key_path(d), checkpoint_key_path(d))
