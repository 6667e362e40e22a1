"""A party of a federation, for scripts: :class:`Party` (``teeflow.Party``).

Shaped like FEDn's ``APIClient`` and NVFlare's session API — one object per party that holds
its keys and a *verified* connection to the KBS (the pin from
:func:`teeflow.kbs.client.verification.verify_kbs`)::

    import teeflow
    alice = teeflow.Party.load("alice", pin="pin.json")        # keys: $TEEFLOW_HOME/parties
    print(alice.agreement.federation)                           # the agreement in force
    token = alice.enroll("client", session="s1")                # alice's client may attest
    alice.publish("examples/mnist")                             # build, seal, publish
    with alice.sessions("https://aggregator:8460") as ctl:      # party-signed control API
        info = ctl.start(SessionRequest(package="mnist", rounds=3))
    arrays = alice.open_model("s1.model", "s1.provenance.jsonl")

TEEU (authorised compute) comes from :class:`teeflow.compute.party.Party`, which this class
extends: :meth:`~teeflow.compute.party.Party.teeu`, :meth:`~teeflow.compute.party.Party.
seal`, :meth:`~teeflow.compute.party.Party.open` (``docs/compute.md``).

Every method that talks to the KBS signs with the party's key where the KBS requires it
(RFC 9421) and checks the KBS's signed state heads (rollback detection).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from teeflow.compute.party import Party as ComputeParty
from teeflow.errors import FLError
from teeflow.fl.arrays import ArrayDict
from teeflow.fl.control import SessionControl
from teeflow.fl.outputs import VerifiedModel, open_model, verify_model
from teeflow.fl.publish import PublishedPackage, publish_package
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.signing import SignedAgreement

__all__ = ["Party"]


class Party(ComputeParty):
    """A party: its keys and a verified KBS connection (module docstring).

    Create with :meth:`load` (keys from ``$TEEFLOW_HOME/parties/<name>``); use as a context
    manager or call :meth:`close`.
    """

    # -- agreements -----------------------------------------------------------------------

    def propose_agreement(self, changes: Mapping[str, Any]) -> FederationAgreement:
        """The next version of the agreement in force with top-level ``changes`` applied
        (``version`` + 1, ``previous`` = the digest of the one in force), unsigned.

        Args:
            changes: top-level sections to replace, e.g. ``{"training": {...}}``.

        Raises:
            ParseError: the result is not a valid agreement; KbsError: no agreement in force.
        """
        current = self.agreement
        data = current.model_dump(mode="json", exclude_none=True)
        data.update(dict(changes))
        data["version"] = current.version + 1
        data["previous"] = digest(current).hex()
        return FederationAgreement.from_mapping(data)

    def sign(self, agreement: FederationAgreement | SignedAgreement) -> SignedAgreement:
        """``agreement`` with this party's signature added (or replaced)."""
        signed = agreement if isinstance(agreement, SignedAgreement) else \
            SignedAgreement(agreement=agreement)
        return signed.signed_by(self.keys)

    def submit(self, signed: SignedAgreement) -> dict[str, Any]:
        """Submit a signed agreement to the KBS; returns ``{"version", "digest",
        "created_at"}``. Drops the cached agreement.

        Raises:
            AgreementRejected: signatures (the update quorum) or update rules fail.
        """
        out = self.kbs.submit_agreement(signed)
        self._agreement = None
        return out

    # -- workloads and packages ------------------------------------------------------------

    def enroll(self, role: str, *, session: str | None = None, uses: int | None = None,
               expires: timedelta = timedelta(days=1), out: Path | str | None = None) -> str:
        """Sign this party's enrollment of a ``role`` workload (``client``, ``aggregator``,
        ``compute``, …): a compact JWS the workload presents when it attests
        (:mod:`teeflow.kbs.policy.enrollment`); ``session`` scopes it to one FL session,
        ``uses`` bounds its attestations. With ``out`` it is also written there (mode
        0600), the file ``--enrollment`` / ``enrollment=`` take.

        Raises:
            ParseError: invalid fields; KbsError: no agreement in force; FLError: ``out``
            cannot be written.
        """
        from teeflow.kbs.policy.enrollment import issue_enrollment

        token = issue_enrollment(self.keys, federation=self.agreement.federation, role=role,
                                 now=datetime.now(UTC), expires=expires, session=session,
                                 uses=uses)
        if out is not None:
            from teeflow._fs import atomic_write

            try:
                atomic_write(Path(out), token.encode("ascii") + b"\n", mode=0o600)
            except OSError as exc:
                raise FLError(f"cannot write {out}: {exc.strerror or exc}") from None
        return token

    def publish(self, package: Path | str, *, archive: Path | str | None = None,
                sealed_path: Path | None = None) -> PublishedPackage:
        """Publish a compute package: build it if ``package`` is a folder (to ``archive``,
        default ``<folder name>.tar`` in the working directory), seal it (to
        ``sealed_path``, default ``<archive>.sealed``) and upload its key with this party's grant
        (released only to attested clients running exactly this package;
        :func:`teeflow.fl.publish.publish_package`).

        Raises:
            PackageError: the folder does not build; FLError: the package is not in the
            agreement; KbsError subclasses: the KBS refused the key or the grant.
        """
        path = Path(package)
        if path.is_dir():
            from teeflow.fl.package import build_package

            data, _ = build_package(path)
            path = Path(archive) if archive is not None else Path(path.name + ".tar")
            try:
                path.write_bytes(data)
            except OSError as exc:
                raise FLError(f"cannot write {path}: {exc.strerror or exc}") from None
        return publish_package(path, self.kbs, self.keys, sealed_path=sealed_path)

    # -- sessions ----------------------------------------------------------------------------

    def sessions(self, url: str, *, timeout: float = 30.0) -> SessionControl:
        """The control API of the aggregator service at ``url`` (``https://``), verified
        (role ``aggregator``, the agreement in force) and signed by this party
        (:class:`teeflow.fl.control.SessionControl`)."""
        return SessionControl(url, self.pin, self.keys, digest(self.agreement).hex(),
                              timeout=timeout)

    # -- models -----------------------------------------------------------------------------------

    def verify_model(self, model: Path | str, provenance: Path | str) -> VerifiedModel:
        """Check a sealed model against its provenance log under the agreement in force
        (every entry signed by a certified aggregator; :func:`teeflow.fl.outputs.
        verify_model`). No key needed.

        Raises:
            ProvenanceError (VerificationError): the log or the model does not verify.
        """
        return verify_model(model, provenance, self.pin.ca(),
                            expected_agreement_digest=digest(self.agreement).hex())

    def open_model(self, model: Path | str, provenance: Path | str | None = None) -> ArrayDict:
        """Open a sealed model this party receives; with ``provenance``, verify first.

        Returns:
            Named float32 arrays (``{name: numpy.ndarray}``).

        Raises:
            FLError: this party is not a recipient; SealingError: the file does not open
            (tampered); VerificationError: provenance or digest mismatch.
        """
        if provenance is not None:
            self.verify_model(model, provenance)
        return open_model(model, self.keys)
