"""Federation agreement: the signed policy every party agreed on (DESIGN.md Glossary).

The agreement is a YAML document validated by :class:`FederationAgreement` (pydantic v2,
frozen, unknown keys refused): ``federation``, ``version``, ``previous``, ``parties``,
``workloads``, ``packages``, ``outputs``, ``allow_emulated``, ``update_quorum``, ``fl``,
``recovery`` (``{k: K}``: K of the n parties' recovery shares restore the KBS state; default
null = all n), ``valid_from``, ``not_after``, and the optional sections (left out of the
digest when unset) ``compute_limits``, ``training`` (:mod:`teeflow.kbs.policy.training`),
``attestation`` (:mod:`teeflow.kbs.policy.freshness`), ``serving``
(:mod:`teeflow.kbs.policy.serving`) and ``apps`` (:mod:`teeflow.kbs.policy.apps`). The
annotated document shape, the CLI workflow and the signature file format are in
``docs/agreement.md``.

**Digest** (:func:`digest`): ``SHA-256(RFC 8785 canonical JSON of
agreement.model_dump(mode="json"))`` — the *validated, normalised* model, not the YAML text:
every field present (defaults filled in, ``null`` for unset optionals), hex lower case,
base64url unpadded, datetimes as UTC ``...Z`` strings, and every set-like list (mrenclave,
TCB statuses, roles, entrypoints, functions, readers, output recipients) sorted and
de-duplicated. YAML key order, comments, quoting, whitespace and list order therefore do not
change it; any change of meaning does.

**Signatures**: Ed25519 over ``b"teeflow-agreement-v1\\0" || digest`` (32-byte digest), base64url.
The initial agreement needs a valid signature from *every* listed party
(:func:`verify_initial`); an update needs ``k`` valid signatures from parties of the *current*
agreement, each checked with its key in the current agreement (:func:`verify_update`).
Failure modes, everywhere: a signature that does not verify → :class:`VerificationError`
(naming the party); missing signatures, an unknown signer, a wrong ``previous``/``version``/
``federation`` or a short quorum → :class:`PolicyViolation` listing every reason. The signing
half (:class:`SignedAgreement`, :func:`sign_agreement`, :func:`verify_initial`,
:func:`verify_update`, :class:`AgreementHistory`) lives in :mod:`teeflow.kbs.policy.signing`
and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

from teeflow.attestation.evidence import TcbStatus
from teeflow.attestation.policy import Hex8, Hex16, Hex32, Hex48, load_policy_document
from teeflow.attestation.snp.abi import SnpProduct
from teeflow.attestation.snp.policy import SnpPolicy, TcbMinimum
from teeflow.errors import PolicyViolation
from teeflow.kbs.policy.apps import MAX_APPS, AppTerms
from teeflow.kbs.policy.canonical import (
    DocumentModel,
    sha256_digest,
    sorted_unique,
    validate_document,
)
from teeflow.kbs.policy.freshness import AttestationTerms
from teeflow.kbs.policy.gpu_values import GpuReferenceValues
from teeflow.kbs.policy.parties import B64Key32, Name, SignKey
from teeflow.kbs.policy.serving import ServingTerms
from teeflow.kbs.policy.training import TrainingTerms

if TYPE_CHECKING:  # SGX and TDX load when their policy is built (to_policy): parties that
    # only read the agreement (an app replica) never import those verifier packages
    from teeflow.attestation.sgx.policy import SgxPolicy
    from teeflow.attestation.tdx.policy import TdxPolicy

__all__ = [
    "MAX_EXAMPLES",
    "MAX_ITEMS",
    "OPTIONAL_SECTIONS",
    "ComputeLimits",
    "FederationAgreement",
    "FlLimits",
    "Ident",
    "OutputKind",
    "PackageSpec",
    "PartyRole",
    "PartySpec",
    "RecoveryQuorum",
    "SgxReferenceValues",
    "SnpReferenceValues",
    "TdxReferenceValues",
    "UpdateQuorum",
    "UtcDatetime",
    "WorkloadRole",
    "WorkloadSpec",
    "digest",
]

#: Upper bound on the number of entries of any list or mapping in an agreement.
MAX_ITEMS = 1000
#: Largest example count an FL cap may name (2**53 - 1, exact in float64 and I-JSON).
MAX_EXAMPLES = 2**53 - 1
_MAX_VERSION = 2**31 - 1
#: Sections left out of the digested document when unset (null).
OPTIONAL_SECTIONS = ("compute_limits", "training", "attestation", "serving", "apps")


class PartyRole(StrEnum):
    """What a party does in the federation (``parties.<name>.roles``)."""

    DATA_OWNER = "data-owner"
    MODEL_OWNER = "model-owner"
    AGGREGATOR_OPERATOR = "aggregator-operator"
    KBS_OPERATOR = "kbs-operator"
    COMPUTE_OPERATOR = "compute-operator"
    RESULT_RECIPIENT = "result-recipient"


class WorkloadRole(StrEnum):
    """A workload kind (``workloads`` keys; the ``role`` claim of an attesting workload)."""

    KBS = "kbs"
    AGGREGATOR = "aggregator"
    CLIENT = "client"
    COMPUTE = "compute"
    SERVE = "serve"
    APP = "app"


class OutputKind(StrEnum):
    """Kinds of outputs (``outputs`` keys)."""

    MODEL = "model"
    RESULT = "result"
    #: parties that own the served model: the aggregator also seals the final model for
    #: the attested ``serve`` workload, and they may ``teeflow model publish --serve``
    SERVE = "serve"


#: A function or entrypoint name: ASCII letter or ``_`` then letters, digits, ``_ . -``; ≤ 128.
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")]


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]


def _statuses(value: tuple[TcbStatus, ...]) -> None:
    if not value:
        raise ValueError("accepted_tcb_statuses must not be empty")
    if TcbStatus.REVOKED in value:
        raise ValueError("Revoked can never be an accepted TCB status")


class SgxReferenceValues(DocumentModel):
    """SGX Reference Values for one workload role (Intel SDM Vol. 3D, REPORTBODY fields).

    Attributes:
        mrenclave: accepted MRENCLAVE values (32-byte hex), sorted; may be empty only when
            ``mrsigner`` is set.
        mrsigner: required MRSIGNER (32-byte hex) or None.
        isv_prod_id: required ISVPRODID (0..65535) or None.
        min_isv_svn: minimum ISVSVN (0..65535) or None.
        accepted_tcb_statuses: Intel TCB statuses accepted (default ``[UpToDate]``; never
            ``Revoked``; not empty).
        allow_debug: accept debug enclaves (default False).
    """

    mrenclave: tuple[Hex32, ...] = Field(default=(), max_length=MAX_ITEMS)
    mrsigner: Hex32 | None = None
    isv_prod_id: int | None = Field(default=None, ge=0, le=0xFFFF)
    min_isv_svn: int | None = Field(default=None, ge=0, le=0xFFFF)
    accepted_tcb_statuses: tuple[TcbStatus, ...] = (TcbStatus.UP_TO_DATE,)
    allow_debug: bool = False

    @field_validator("mrenclave", "accepted_tcb_statuses", mode="after")
    @classmethod
    def _norm(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        return sorted_unique(value)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.mrenclave and self.mrsigner is None:
            raise ValueError("set mrenclave and/or mrsigner (no identity would accept any enclave)")
        _statuses(self.accepted_tcb_statuses)
        return self

    def to_policy(self, *, allow_emulated: bool) -> SgxPolicy:
        """The :class:`~teeflow.attestation.sgx.policy.SgxPolicy` these values define."""
        from teeflow.attestation.sgx.policy import SgxPolicy

        return SgxPolicy(
            mrenclaves=self.mrenclave,
            mrsigner=self.mrsigner,
            isv_prod_id=self.isv_prod_id,
            min_isv_svn=self.min_isv_svn,
            allow_debug=self.allow_debug,
            accepted_tcb_statuses=frozenset(self.accepted_tcb_statuses),
            allow_emulated=allow_emulated,
        )


class TdxReferenceValues(DocumentModel):
    """TDX Reference Values for one workload role (Intel TDX Module ABI, TDREPORT/TDINFO).

    Attributes:
        mrtd: accepted MRTD values (48-byte hex), sorted; may be empty only when at least
            one RTMR is pinned.
        rtmr0, rtmr1, rtmr2, rtmr3: exact RTMR values (48-byte hex) or None = any.
        mrseam: accepted TDX module measurements (48-byte hex); empty = any Intel-signed
            module (the signer is checked against Intel's TCB Info).
        mrconfigid, mrowner, mrownerconfig: exact values (48-byte hex) or None.
        td_attributes, xfam: exact values (8-byte hex, as stored in the report) or None.
        min_tee_tcb_svn: minimum TEE_TCB_SVN (16-byte hex, per byte) or None.
        accepted_tcb_statuses: Intel TCB statuses accepted (default ``[UpToDate]``).
        allow_debug: accept TD_ATTRIBUTES.DEBUG (default False).
    """

    mrtd: tuple[Hex48, ...] = Field(default=(), max_length=MAX_ITEMS)
    rtmr0: Hex48 | None = None
    rtmr1: Hex48 | None = None
    rtmr2: Hex48 | None = None
    rtmr3: Hex48 | None = None
    mrseam: tuple[Hex48, ...] = Field(default=(), max_length=MAX_ITEMS)
    mrconfigid: Hex48 | None = None
    mrowner: Hex48 | None = None
    mrownerconfig: Hex48 | None = None
    td_attributes: Hex8 | None = None
    xfam: Hex8 | None = None
    min_tee_tcb_svn: Hex16 | None = None
    accepted_tcb_statuses: tuple[TcbStatus, ...] = (TcbStatus.UP_TO_DATE,)
    allow_debug: bool = False

    @field_validator("mrtd", "mrseam", "accepted_tcb_statuses", mode="after")
    @classmethod
    def _norm(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        return sorted_unique(value)

    @model_validator(mode="after")
    def _check(self) -> Self:
        rtmrs = (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)
        if not self.mrtd and all(r is None for r in rtmrs):
            raise ValueError("set mrtd and/or an rtmr (no identity would accept any TD)")
        _statuses(self.accepted_tcb_statuses)
        return self

    def to_policy(self, *, allow_emulated: bool) -> TdxPolicy:
        """The :class:`~teeflow.attestation.tdx.TdxPolicy` these values define."""
        from teeflow.attestation.tdx.policy import TdxPolicy

        return TdxPolicy(
            mrtds=self.mrtd,
            rtmr0=self.rtmr0,
            rtmr1=self.rtmr1,
            rtmr2=self.rtmr2,
            rtmr3=self.rtmr3,
            mrseams=self.mrseam,
            mrconfigid=self.mrconfigid,
            mrowner=self.mrowner,
            mrownerconfig=self.mrownerconfig,
            td_attributes=self.td_attributes,
            xfam=self.xfam,
            min_tee_tcb_svn=self.min_tee_tcb_svn,
            accepted_tcb_statuses=frozenset(self.accepted_tcb_statuses),
            allow_debug=self.allow_debug,
            allow_emulated=allow_emulated,
        )


class SnpReferenceValues(DocumentModel):
    """SEV-SNP Reference Values for one workload role (AMD SEV-SNP Firmware ABI #56860,
    ATTESTATION_REPORT fields).

    Attributes:
        measurement: accepted launch MEASUREMENT values (48-byte hex), sorted; not empty.
        host_data: required HOST_DATA (32-byte hex) or None.
        id_key_digest, author_key_digest: required digests (48-byte hex) or None.
        family_id, image_id: required values (16-byte hex) or None.
        min_guest_svn: minimum GUEST_SVN (u32) or None.
        min_tcb, min_launch_tcb: per-component TCB minimums (``bootloader``, ``tee``,
            ``snp``, ``microcode``, ``fmc``) or None.
        allow_debug, allow_migration_agent: guest policy bits accepted (default False).
        allow_smt: accept SMT-enabled hosts (default True).
        vmpl / max_vmpl: exact VMPL or highest VMPL (0..3), or None.
        allowed_products: product lines (``Milan``, ``Genoa``, ``Turin``); empty = any.
        allow_vlek: accept VLEK-signed reports (default True).
    """

    measurement: tuple[Hex48, ...] = Field(min_length=1, max_length=MAX_ITEMS)
    host_data: Hex32 | None = None
    id_key_digest: Hex48 | None = None
    author_key_digest: Hex48 | None = None
    family_id: Hex16 | None = None
    image_id: Hex16 | None = None
    min_guest_svn: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)
    min_tcb: TcbMinimum | None = None
    min_launch_tcb: TcbMinimum | None = None
    allow_debug: bool = False
    allow_migration_agent: bool = False
    allow_smt: bool = True
    vmpl: int | None = Field(default=None, ge=0, le=3)
    max_vmpl: int | None = Field(default=None, ge=0, le=3)
    allowed_products: tuple[SnpProduct, ...] = Field(default=(), max_length=16)
    allow_vlek: bool = True

    @field_validator("measurement", "allowed_products", mode="after")
    @classmethod
    def _norm(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        return sorted_unique(value)

    def to_policy(self, *, allow_emulated: bool) -> SnpPolicy:
        """The :class:`~teeflow.attestation.snp.SnpPolicy` these values define."""
        return SnpPolicy(
            measurements=self.measurement,
            host_data=self.host_data,
            id_key_digest=self.id_key_digest,
            author_key_digest=self.author_key_digest,
            family_id=self.family_id,
            image_id=self.image_id,
            min_guest_svn=self.min_guest_svn,
            min_tcb=self.min_tcb,
            min_launch_tcb=self.min_launch_tcb,
            allow_debug=self.allow_debug,
            allow_migration_agent=self.allow_migration_agent,
            allow_smt=self.allow_smt,
            vmpl=self.vmpl,
            max_vmpl=self.max_vmpl,
            allowed_products=frozenset(self.allowed_products),
            allow_vlek=self.allow_vlek,
            allow_emulated=allow_emulated,
        )


class WorkloadSpec(DocumentModel):
    """Reference values of one workload role, per CPU platform (at least one), and optional
    GPU reference values (:class:`~teeflow.kbs.policy.gpu_values.GpuReferenceValues`): a
    role with ``gpu`` requires CPU and GPU evidence. ``gpu`` is left out of the document
    when unset, so agreements without GPUs keep their digests."""

    sgx: SgxReferenceValues | None = None
    tdx: TdxReferenceValues | None = None
    snp: SnpReferenceValues | None = None
    gpu: GpuReferenceValues | None = None

    @model_validator(mode="after")
    def _one_platform(self) -> Self:
        if self.sgx is None and self.tdx is None and self.snp is None:
            raise ValueError("a workload needs reference values for at least one platform")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_gpu(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("gpu", 0) is None:
            del out["gpu"]
        return out


class PackageSpec(DocumentModel):
    """A compute package the federation accepts.

    Attributes:
        digest: SHA-256 of the package archive (32-byte hex).
        entrypoints: entrypoint names (``train``, ``validate``), sorted.
        functions: named functions (TEEU-style), sorted.
        readers: parties whose data this package may read, sorted.
    """

    digest: Hex32
    entrypoints: tuple[Ident, ...] = Field(default=(), max_length=MAX_ITEMS)
    functions: tuple[Ident, ...] = Field(default=(), max_length=MAX_ITEMS)
    readers: tuple[Name, ...] = Field(default=(), max_length=MAX_ITEMS)

    @field_validator("entrypoints", "functions", "readers", mode="after")
    @classmethod
    def _norm(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return sorted_unique(value)

    @model_validator(mode="after")
    def _callable(self) -> Self:
        if not self.entrypoints and not self.functions:
            raise ValueError("a package needs at least one entrypoint or function")
        return self

    @property
    def callables(self) -> frozenset[str]:
        """Entrypoints and functions together."""
        return frozenset(self.entrypoints) | frozenset(self.functions)


class PartySpec(DocumentModel):
    """A party's public keys and roles (keys as in ``NAME.pub.json``)."""

    sign_key: SignKey
    recipient_key: B64Key32
    roles: tuple[PartyRole, ...] = Field(min_length=1, max_length=len(PartyRole))

    @field_validator("roles", mode="after")
    @classmethod
    def _norm(cls, value: tuple[PartyRole, ...]) -> tuple[PartyRole, ...]:
        return sorted_unique(value)


class UpdateQuorum(DocumentModel):
    """``k`` of the ``n`` parties must sign an update (1 ≤ k ≤ n)."""

    k: int = Field(ge=1, le=MAX_ITEMS)


ExampleCount = Annotated[int, Field(ge=1, le=MAX_EXAMPLES)]


class FlLimits(DocumentModel):
    """Federated-learning limits (``fl``): how much one client's update may weigh.

    FedAvg weighs each update by the ``num_examples`` its client reports; a party that
    reports 10**9 would dominate the global model. The aggregator clips each reported count
    to the party's cap (``max_examples_per_party``, else ``max_examples``; none = unbounded)
    and records the clipping in the provenance log (``docs/fl.md`` "Update weights").

    Attributes:
        max_examples: cap on every client's ``num_examples`` (1..2**53-1) or None.
        max_examples_per_party: per-party caps, overriding ``max_examples``.
    """

    max_examples: ExampleCount | None = None
    max_examples_per_party: dict[Name, ExampleCount] = Field(
        default_factory=dict, max_length=MAX_ITEMS
    )

    def cap(self, party: str) -> int | None:
        """The cap on ``party``'s ``num_examples`` (None: unbounded)."""
        return self.max_examples_per_party.get(party, self.max_examples)


class RecoveryQuorum(DocumentModel):
    """``k`` of the ``n`` parties' recovery shares restore the KBS state (1 ≤ k ≤ n, at
    most 255 parties: Shamir shares over GF(2^128) are indexed by one byte here)."""

    k: int = Field(ge=1, le=255)


class ComputeLimits(DocumentModel):
    """Bounds on what parties may send a compute worker (issue 10, "Memory"): the largest
    sealed input and the total input bytes one party may keep at a worker (bytes)."""

    max_input_bytes: int = Field(default=1 << 30, ge=1, le=1 << 40)
    max_party_bytes: int = Field(default=4 << 30, ge=1, le=1 << 44)


class FederationAgreement(DocumentModel):
    """The federation agreement (see the module docstring for the document shape)."""

    federation: Name
    version: int = Field(ge=1, le=_MAX_VERSION)
    previous: Hex32 | None = None
    parties: dict[Name, PartySpec] = Field(min_length=1, max_length=MAX_ITEMS)
    workloads: dict[WorkloadRole, WorkloadSpec] = Field(default_factory=dict)
    packages: dict[Name, PackageSpec] = Field(default_factory=dict, max_length=MAX_ITEMS)
    outputs: dict[OutputKind, tuple[Name, ...]] = Field(default_factory=dict)
    allow_emulated: bool = False
    update_quorum: UpdateQuorum
    fl: FlLimits = Field(default_factory=FlLimits)
    recovery: RecoveryQuorum | None = None
    valid_from: UtcDatetime | None = None
    not_after: UtcDatetime | None = None
    compute_limits: ComputeLimits | None = None
    training: TrainingTerms | None = None
    attestation: AttestationTerms | None = None
    serving: ServingTerms | None = None
    apps: dict[Name, AppTerms] | None = Field(default=None, max_length=MAX_APPS)

    @field_validator("outputs", mode="after")
    @classmethod
    def _norm_outputs(
        cls, v: dict[OutputKind, tuple[str, ...]]
    ) -> dict[OutputKind, tuple[str, ...]]:
        for names in v.values():
            if len(names) > MAX_ITEMS:
                raise ValueError(f"at most {MAX_ITEMS} recipients per output kind")
        return {kind: sorted_unique(names) for kind, names in v.items()}

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[str] = []
        if (self.version == 1) != (self.previous is None):
            problems.append("previous must be null exactly when version is 1")
        if self.update_quorum.k > len(self.parties):
            problems.append(
                f"update_quorum.k={self.update_quorum.k} exceeds {len(self.parties)} parties"
            )
        if self.recovery is not None and self.recovery.k > len(self.parties):
            problems.append(f"recovery.k={self.recovery.k} exceeds {len(self.parties)} parties")
        for name, pkg in sorted(self.packages.items()):
            problems += [
                f"package {name}: reader {r} is not a party"
                for r in pkg.readers
                if r not in self.parties
            ]
        for kind, names in sorted(self.outputs.items()):
            problems += [
                f"outputs.{kind}: {n} is not a party" for n in names if n not in self.parties
            ]
        problems += [
            f"fl.max_examples_per_party: {n} is not a party"
            for n in sorted(self.fl.max_examples_per_party)
            if n not in self.parties
        ]
        seen: dict[str, str] = {}
        for name, pkg in sorted(self.packages.items()):
            if pkg.digest in seen:
                problems.append(f"packages {seen[pkg.digest]} and {name} have the same digest")
            seen.setdefault(pkg.digest, name)
        problems += [
            f"apps.{name}: package {terms.package[:16]}... is not in packages"
            for name, terms in sorted((self.apps or {}).items())
            if self.package_by_digest(terms.package) is None
        ]
        t = self.training
        evaluator = t.outliers.utility.evaluator if t and t.outliers else None
        if evaluator is not None and evaluator not in self.parties:
            problems.append(f"training.outliers.utility.evaluator: {evaluator} is not a party")
        if OutputKind.SERVE in self.outputs and WorkloadRole.SERVE not in self.workloads:
            problems.append("outputs.serve needs reference values for workloads.serve")
        if self.serving is not None:
            problems += [
                f"serving.callers: {n} is not a party"
                for n in sorted(self.serving.callers)
                if n not in self.parties
            ]
        if self.valid_from and self.not_after and self.valid_from >= self.not_after:
            problems.append("valid_from must be before not_after")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- loading and saving --------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FederationAgreement:
        """Validate a parsed document.

        Raises:
            ParseError: every schema or consistency problem, in one message.
        """
        return validate_document(cls, data, "federation agreement")

    @classmethod
    def load(cls, path: Path | str) -> FederationAgreement:
        """Read a YAML (or ``.json``) agreement file (≤ 1 MiB, duplicate keys refused).

        Raises:
            ParseError: unreadable, malformed or invalid document.
        """
        return cls.from_mapping(load_policy_document(path))

    def to_document(self) -> dict[str, Any]:
        """The JSON value that is digested (``model_dump(mode="json")``, without the optional
        sections (:data:`OPTIONAL_SECTIONS`) that are unset, so agreements written before a
        section existed keep their digest)."""
        doc = self.model_dump(mode="json")
        for section in OPTIONAL_SECTIONS:
            if doc.get(section) is None:
                doc.pop(section, None)
        return doc

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_document` (field order; loads back to an equal model)."""
        import yaml

        return yaml.safe_dump(self.to_document(), sort_keys=False)

    # -- queries ---------------------------------------------------------------------------

    def digest(self) -> bytes:
        """Same as :func:`digest`."""
        return digest(self)

    def output_recipients(self) -> frozenset[str]:
        """Every party named in ``outputs`` (any kind)."""
        return frozenset(n for names in self.outputs.values() for n in names)

    def package_by_digest(self, digest_hex: str) -> tuple[str, PackageSpec] | None:
        """``(name, spec)`` of the package with this digest (hex, any case), or None."""
        want = digest_hex.lower()
        for name, spec in self.packages.items():
            if spec.digest == want:
                return name, spec
        return None

    def reference_values(
        self, role: WorkloadRole | str, platform: str
    ) -> SgxReferenceValues | TdxReferenceValues | SnpReferenceValues | None:
        """The role's reference values for ``platform`` (``sgx``, ``tdx``, ``snp``), or None
        (unknown role or platform, or none given)."""
        spec = self.workloads.get(WorkloadRole(role)) if role in set(WorkloadRole) else None
        if spec is None or platform not in ("sgx", "tdx", "snp"):
            return None
        values: SgxReferenceValues | TdxReferenceValues | SnpReferenceValues | None
        values = getattr(spec, platform)
        return values

    def gpu_reference_values(self, role: WorkloadRole | str) -> GpuReferenceValues | None:
        """The role's GPU reference values (the role then requires GPU evidence), or None."""
        spec = self.workloads.get(WorkloadRole(role)) if role in set(WorkloadRole) else None
        return None if spec is None else spec.gpu

    def _values(self, role: WorkloadRole | str, platform: str) -> Any:
        values = self.reference_values(role, platform)
        if values is None:
            raise PolicyViolation(
                f"agreement has no {platform.upper()} reference values for role {role!s}"
            )
        return values

    def sgx_policy(self, role: WorkloadRole | str) -> SgxPolicy:
        """The SGX Appraisal Policy for a workload role (``allow_emulated`` included).

        Raises:
            PolicyViolation: the role has no SGX reference values in this agreement.
        """
        values: SgxReferenceValues = self._values(role, "sgx")
        return values.to_policy(allow_emulated=self.allow_emulated)

    def tdx_policy(self, role: WorkloadRole | str) -> TdxPolicy:
        """The TDX Appraisal Policy for a workload role (``allow_emulated`` included).

        Raises:
            PolicyViolation: the role has no TDX reference values in this agreement.
        """
        values: TdxReferenceValues = self._values(role, "tdx")
        return values.to_policy(allow_emulated=self.allow_emulated)

    def snp_policy(self, role: WorkloadRole | str) -> SnpPolicy:
        """The SEV-SNP Appraisal Policy for a workload role (``allow_emulated`` included).

        Raises:
            PolicyViolation: the role has no SNP reference values in this agreement.
        """
        values: SnpReferenceValues = self._values(role, "snp")
        return values.to_policy(allow_emulated=self.allow_emulated)

    def time_violations(self, now: datetime) -> list[str]:
        """Reasons the agreement is not in force at ``now`` (timezone-aware); [] if it is."""
        if now.tzinfo is None:
            return ["now must be timezone-aware"]
        out = []
        if self.valid_from and now < self.valid_from:
            out.append(f"agreement not valid before {self.valid_from.isoformat()}")
        if self.not_after and now > self.not_after:
            out.append(f"agreement expired at {self.not_after.isoformat()}")
        return out


def digest(agreement: FederationAgreement) -> bytes:
    """The agreement digest: SHA-256 (32 bytes) of the RFC 8785 canonical JSON of
    ``agreement.model_dump(mode="json")`` (see the module docstring)."""
    return sha256_digest(agreement.to_document())

