"""Signing and accepting federation agreements: signatures, k-of-n updates, history.

Signatures are Ed25519 over ``b"teeflow-agreement-v1\\0" || digest`` (the 32-byte
:func:`teeflow.kbs.policy.agreement.digest`), base64url (RFC 8032; RFC 4648 section 5). The
initial agreement needs a valid signature from *every* listed party
(:func:`verify_initial`); an update needs ``k`` valid signatures from parties of the
*current* agreement, each checked with its key in the current agreement
(:func:`verify_update`); :class:`AgreementHistory` is the append-only verified chain.
A signature that does not verify raises :class:`~teeflow.errors.VerificationError`
(naming the party); missing signatures, an unknown signer, a wrong ``previous`` /
``version`` / ``federation`` or a short quorum raise
:class:`~teeflow.errors.PolicyViolation` listing every reason. Formats:
``docs/agreement.md``. Every name here is re-exported by :mod:`teeflow.kbs.policy.agreement`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydantic import Field

from teeflow.errors import PolicyViolation, VerificationError
from teeflow.kbs.policy.agreement import MAX_ITEMS, FederationAgreement, digest
from teeflow.kbs.policy.canonical import (
    AGREEMENT_DOMAIN,
    DocumentModel,
    b64url_encode,
    signing_input,
    validate_document,
)
from teeflow.kbs.policy.parties import B64Sig64, Name, PartyKeys, verify_ed25519

__all__ = [
    "AgreementHistory",
    "SignedAgreement",
    "sign_agreement",
    "verify_initial",
    "verify_update",
]


def sign_agreement(agreement: FederationAgreement, party_keys: PartyKeys) -> str:
    """Ed25519 signature (base64url, 64 bytes) over ``AGREEMENT_DOMAIN || digest(agreement)``."""
    return b64url_encode(party_keys.sign(signing_input(AGREEMENT_DOMAIN, digest(agreement))))


class SignedAgreement(DocumentModel):
    """An agreement with party signatures (``party name -> base64url signature``)."""

    agreement: FederationAgreement
    signatures: dict[Name, B64Sig64] = Field(default_factory=dict, max_length=MAX_ITEMS)

    def with_signature(self, party: str, signature: str) -> SignedAgreement:
        """A copy with ``party``'s signature added or replaced."""
        return SignedAgreement(
            agreement=self.agreement, signatures={**self.signatures, party: signature}
        )

    def signed_by(self, keys: PartyKeys) -> SignedAgreement:
        """A copy signed by ``keys`` (added or replaced)."""
        return self.with_signature(keys.name, sign_agreement(self.agreement, keys))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SignedAgreement:
        """Validate a parsed envelope ``{agreement, signatures}``.

        Raises:
            ParseError: invalid envelope or agreement.
        """
        return validate_document(cls, data, "signed agreement")


def _check_signatures(
    signed: SignedAgreement, keys: Mapping[str, str], fallback: Mapping[str, str] | None = None
) -> tuple[set[str], list[str]]:
    """Verify every signature; returns (signers found in ``keys``, policy problems).

    Raises:
        VerificationError: a signature by a known party does not verify.
    """
    message = signing_input(AGREEMENT_DOMAIN, digest(signed.agreement))
    valid: set[str] = set()
    problems: list[str] = []
    for party, sig in sorted(signed.signatures.items()):
        key = keys.get(party) or (fallback or {}).get(party)
        if key is None:
            problems.append(f"signature by {party}, who is not a party")
            continue
        try:
            verify_ed25519(key, sig, message)
        except VerificationError:
            raise VerificationError(f"signature of party {party} does not verify") from None
        if party in keys:
            valid.add(party)
    return valid, problems


def _keys(agreement: FederationAgreement) -> dict[str, str]:
    return {name: p.sign_key for name, p in agreement.parties.items()}


def verify_initial(signed: SignedAgreement) -> bytes:
    """Accept a first agreement: version 1 and a valid signature from every listed party.

    Returns:
        The agreement digest (32 bytes).

    Raises:
        VerificationError: a listed party's signature does not verify.
        PolicyViolation: version is not 1, signatures missing, or a signer is not a party
            (every reason listed).
    """
    agreement = signed.agreement
    valid, problems = _check_signatures(signed, _keys(agreement))
    if agreement.version != 1:
        problems.insert(0, f"an initial agreement must have version 1, not {agreement.version}")
    problems += [
        f"missing signature of party {p}" for p in sorted(agreement.parties) if p not in valid
    ]
    if problems:
        raise PolicyViolation("agreement not accepted: " + "; ".join(problems), problems)
    return digest(agreement)


def verify_update(signed_new: SignedAgreement, current_signed: SignedAgreement) -> bytes:
    """Accept an update of the current agreement.

    Rules: same ``federation``; ``version == current.version + 1``; ``previous ==
    digest(current)``; at least ``current.update_quorum.k`` valid signatures by parties of the
    *current* agreement, each checked with the key the current agreement lists. Signatures by
    parties only in the new agreement are checked with their new key but do not count.
    ``current_signed`` is trusted as already accepted (see :class:`AgreementHistory`).

    Returns:
        The new agreement's digest (32 bytes).

    Raises:
        VerificationError: a signature does not verify.
        PolicyViolation: every broken rule, listed.
    """
    new, cur = signed_new.agreement, current_signed.agreement
    valid, problems = _check_signatures(signed_new, _keys(cur), fallback=_keys(new))
    if new.federation != cur.federation:
        problems.append(f"federation changed from {cur.federation} to {new.federation}")
    if new.version != cur.version + 1:
        problems.append(f"version must be {cur.version + 1}, not {new.version}")
    cur_digest = digest(cur).hex()
    if new.previous != cur_digest:
        problems.append(f"previous is {new.previous}, expected {cur_digest}")
    k = cur.update_quorum.k
    if len(valid) < k:
        problems.append(f"{len(valid)} valid signature(s) of current parties, quorum is {k}")
    if problems:
        raise PolicyViolation("agreement update not accepted: " + "; ".join(problems), problems)
    return digest(new)


class AgreementHistory:
    """Append-only, verified chain of agreements of one federation.

    The first entry must pass :func:`verify_initial`, each later one :func:`verify_update`
    against its predecessor. A refused entry leaves the history unchanged.
    """

    def __init__(self, entries: Iterable[SignedAgreement] = ()) -> None:
        """Build a history by appending ``entries`` in order (same errors as :meth:`append`)."""
        self._entries: list[SignedAgreement] = []
        self._digests: list[bytes] = []
        for entry in entries:
            self.append(entry)

    def append(self, signed: SignedAgreement) -> bytes:
        """Verify and append; returns the new digest.

        Raises:
            VerificationError, PolicyViolation: see :func:`verify_initial` / :func:`verify_update`.
        """
        d = verify_update(signed, self._entries[-1]) if self._entries else verify_initial(signed)
        self._entries.append(signed)
        self._digests.append(d)
        return d

    def verify_chain(self) -> None:
        """Re-verify the whole chain from the first entry.

        Raises:
            VerificationError, PolicyViolation: the first broken link.
        """
        AgreementHistory(self._entries)

    @property
    def current(self) -> SignedAgreement | None:
        """The newest accepted agreement, or None when empty."""
        return self._entries[-1] if self._entries else None

    @property
    def entries(self) -> tuple[SignedAgreement, ...]:
        """All accepted agreements, oldest first."""
        return tuple(self._entries)

    @property
    def digests(self) -> tuple[bytes, ...]:
        """Their digests, oldest first."""
        return tuple(self._digests)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[SignedAgreement]:
        return iter(tuple(self._entries))
