"""CLI commands: ``teeflow agreement init|sign|show|diff`` (:mod:`teeflow.kbs.policy.agreement`).

Signatures live next to the agreement in a **signature file** ``FILE.sigs.json`` (so the YAML
stays human-edited and diffable)::

    {"format": "teeflow-agreement-signatures-v1", "federation": "study", "version": 1,
     "digest": "<64 hex: agreement digest>", "signatures": {"hospital-a": "<b64url>", ...}}

``digest`` records what was signed: when the YAML changes meaning, its digest changes and the
old signatures are stale — ``sign`` then starts a fresh file (saying so) and ``show`` reports
them as stale. Signature files of parties who signed separately are merged with
``sign --merge OTHER.sigs.json``. (``submit``, which needs the KBS service, comes later.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from teeflow._fs import atomic_write
from teeflow.cli.output import JsonOption, echo_json
from teeflow.errors import KbsError, ParseError, PolicyViolation, VerificationError
from teeflow.kbs.policy.agreement import (
    FederationAgreement,
    digest,
)
from teeflow.kbs.policy.canonical import (
    AGREEMENT_DOMAIN,
    signing_input,
)
from teeflow.kbs.policy.parties import (
    PartyKeys,
    PartyPublic,
    party_dir,
    verify_ed25519,
)
from teeflow.kbs.policy.signature_files import (
    SignatureFile,
    load_signatures,
    load_signed,
    signature_path,
)
from teeflow.kbs.policy.signing import (
    SignedAgreement,
    sign_agreement,
    verify_initial,
    verify_update,
)

__all__ = [
    "diff_agreements",
    "register",
]

def _write_json(path: Path, doc: dict[str, Any]) -> None:
    atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def _fmt(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def _diff(old: object, new: object, path: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in new:
                out.append(f"- {sub}: {_fmt(old[key])}")
            elif key not in old:
                out.append(f"+ {sub}: {_fmt(new[key])}")
            else:
                _diff(old[key], new[key], sub, out)
    elif isinstance(old, list) and isinstance(new, list) and old != new:
        # every list in an agreement is a sorted set of scalars
        out += [f"- {path}: {_fmt(v)}" for v in old if v not in new]
        out += [f"+ {path}: {_fmt(v)}" for v in new if v not in old]
    elif old != new:
        out.append(f"~ {path}: {_fmt(old)} -> {_fmt(new)}")


def diff_agreements(old: FederationAgreement, new: FederationAgreement) -> list[str]:
    """Structural differences, one line each: ``- path: value`` (removed), ``+ path: value``
    (added), ``~ path: old -> new`` (changed); paths are dotted field names."""
    out: list[str] = []
    _diff(old.to_document(), new.to_document(), "", out)
    return out


_TEMPLATE_HEADER = """\
# teeflow federation agreement (docs/agreement.md). Edit, then every party runs
#   teeflow agreement sign {file} --party NAME
# Fill in before signing:
#   workloads:  role (kbs|aggregator|client|compute|serve) -> reference values, e.g.
#     aggregator: {{sgx: {{mrenclave: [<64 hex>], accepted_tcb_statuses: [UpToDate]}}}}
#   packages:   name -> {{digest: <64 hex>, entrypoints: [train], readers: [<party>]}}
#   parties.*.roles: data-owner, model-owner, aggregator-operator, kbs-operator,
#                    compute-operator, result-recipient
"""


def _parse_party_option(spec: str) -> tuple[str, PartyPublic]:
    name, sep, file = spec.partition("=")
    if not sep or not name or not file:
        raise ParseError(f"--party expects NAME=PUBFILE, got {spec!r}")
    pub = PartyPublic.load(file)
    if pub.name != name:
        raise ParseError(f"{file} holds the keys of {pub.name}, not {name}")
    return name, pub


def _signature_status(signed: SignedAgreement, party: str, key: str) -> str:
    sig = signed.signatures.get(party)
    if sig is None:
        return "not signed"
    message = signing_input(AGREEMENT_DOMAIN, digest(signed.agreement))
    try:
        verify_ed25519(key, sig, message)
    except VerificationError:
        return "INVALID SIGNATURE"
    return "signed"


def _show_doc(
    file: Path, signed: SignedAgreement, d: str, stale: bool, previous: Path | None
) -> dict[str, Any]:
    """``agreement show --json``: the facts the text output shows."""
    agreement = signed.agreement
    status = "complete"
    problem = None
    try:
        if previous is not None:
            verify_update(signed, load_signed(previous))
        elif agreement.version == 1:
            verify_initial(signed)
        else:
            status = "update-unchecked"
    except (PolicyViolation, VerificationError) as exc:
        status, problem = "incomplete", str(exc)
    return {
        "path": str(file),
        "federation": agreement.federation,
        "version": agreement.version,
        "digest": d,
        "previous": agreement.previous,
        "allow_emulated": agreement.allow_emulated,
        "update_quorum": agreement.update_quorum.k,
        "parties": {
            name: {
                "roles": list(spec.roles),
                "signature": _signature_status(signed, name, spec.sign_key),
            }
            for name, spec in sorted(agreement.parties.items())
        },
        "signature_file_stale": stale,
        "workloads": sorted(agreement.workloads),
        "packages": {n: p.digest for n, p in sorted(agreement.packages.items())},
        "outputs": {str(k): list(v) for k, v in sorted(agreement.outputs.items())},
        "status": status,
        "problem": problem,
    }


def register(app: typer.Typer) -> None:
    """Add the ``agreement`` command group to the root app."""
    grp = typer.Typer(
        name="agreement", help="Federation agreement: init, sign, show, diff, submit."
    )

    @grp.command("init")
    def init(
        federation: Annotated[str, typer.Option("--federation", help="Federation name.")],
        party: Annotated[
            list[str], typer.Option("--party", help="NAME=PUBFILE (NAME.pub.json); repeat.")
        ],
        output: Annotated[Path, typer.Option("-o", "--output", help="Agreement YAML to write.")],
        quorum: Annotated[
            int | None, typer.Option("--quorum", help="Update quorum k (default: majority).")
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT.")] = False,
        as_json: JsonOption = False,
    ) -> None:
        """Write an agreement template with the parties' public keys."""
        parties: dict[str, PartyPublic] = {}
        for spec in party:
            name, pub = _parse_party_option(spec)
            if name in parties:
                raise ParseError(f"party {name} given twice")
            parties[name] = pub
        if output.exists() and not force:
            raise KbsError(f"{output} exists (use --force to overwrite)")
        names = sorted(parties)
        doc = {
            "federation": federation,
            "version": 1,
            "previous": None,
            "parties": {
                n: {
                    "sign_key": p.sign_key,
                    "recipient_key": p.recipient_key,
                    "roles": ["data-owner"],
                }
                for n, p in parties.items()
            },
            "workloads": {},
            "packages": {},
            "outputs": {"model": names, "result": names},
            "allow_emulated": False,
            "update_quorum": {"k": quorum if quorum is not None else len(names) // 2 + 1},
        }
        agreement = FederationAgreement.from_mapping(doc)
        output.write_text(_TEMPLATE_HEADER.format(file=output.name) + agreement.to_yaml())
        if as_json:
            echo_json({"path": str(output), "federation": federation, "parties": names,
                       "digest": digest(agreement).hex()})
            return
        typer.echo(f"wrote {output} (federation {federation}, {len(names)} parties)")
        typer.echo(f"digest {digest(agreement).hex()}")

    @grp.command("sign")
    def sign(
        file: Annotated[Path, typer.Argument(help="Agreement YAML.")],
        party: Annotated[str, typer.Option("--party", help="Signing party (its keys).")],
        key_dir: Annotated[
            Path | None, typer.Option("--dir", help="Key directory (default $TEEFLOW_HOME).")
        ] = None,
        merge: Annotated[
            list[str] | None, typer.Option("--merge", help="Other .sigs.json files to merge.")
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Add PARTY's signature to FILE.sigs.json (creating or refreshing it)."""
        agreement = FederationAgreement.load(file)
        keys = PartyKeys.load_dir(key_dir or party_dir(party), party)
        listed = agreement.parties.get(party)
        if listed is not None and listed.sign_key != keys.public().sign_key:
            raise KbsError(f"{party}'s key differs from the key the agreement lists for {party}")
        if listed is None and agreement.version == 1:
            raise KbsError(f"{party} is not a party of this agreement")
        if listed is None:
            typer.echo(
                f"note: {party} is not in this version (signing as a current party)", err=True
            )
        d = digest(agreement).hex()
        sig_file = signature_path(file)
        existing = load_signatures(sig_file)
        signatures: dict[str, str] = {}
        if existing is not None and existing.digest == d:
            signatures.update(existing.signatures)
        elif existing is not None:
            typer.secho(
                f"warning: dropping {len(existing.signatures)} stale signature(s) "
                "made over a different version of the agreement",
                fg=typer.colors.YELLOW,
                err=True,
            )
        for other in merge or []:
            extra = load_signatures(Path(other))
            if extra is None or extra.digest != d:
                raise VerificationError(f"{other} is missing or signs another agreement digest")
            signatures.update(extra.signatures)
        signatures[party] = sign_agreement(agreement, keys)
        sigs = SignatureFile(
            federation=agreement.federation,
            version=agreement.version,
            digest=d,
            signatures=signatures,
        )
        _write_json(sig_file, sigs.model_dump(mode="json"))
        n = sum(1 for p in agreement.parties if p in signatures)
        if as_json:
            echo_json({"party": party, "digest": d, "signature_file": str(sig_file),
                       "signed_by": sorted(signatures), "signed": n,
                       "parties": len(agreement.parties)})
            return
        typer.echo(f"{party} signed {file} (digest {d}); {n} of {len(agreement.parties)} signed")
        typer.echo(f"signatures in {sig_file}")

    @grp.command("show")
    def show(
        file: Annotated[Path, typer.Argument(help="Agreement YAML.")],
        previous: Annotated[
            Path | None, typer.Option("--previous", help="Current agreement (for updates).")
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Digest, parties, signatures, completeness; allow_emulated loudly."""
        agreement = FederationAgreement.load(file)
        d = digest(agreement).hex()
        existing = load_signatures(signature_path(file))
        stale = existing is not None and existing.digest != d
        sigs = existing.signatures if existing is not None and not stale else {}
        signed = SignedAgreement(agreement=agreement, signatures=sigs)
        if as_json:
            echo_json(_show_doc(file, signed, d, stale, previous))
            return
        typer.echo(f"agreement   {file}")
        typer.echo(f"federation  {agreement.federation}  version {agreement.version}")
        typer.echo(f"digest      {d}")
        typer.echo(f"previous    {agreement.previous or '-'}")
        if agreement.allow_emulated:
            typer.secho(
                "!!! allow_emulated: TRUE — EMULATED (software) TEEs are accepted: "
                "NO hardware protection !!!",
                fg=typer.colors.RED,
                bold=True,
            )
        else:
            typer.echo("allow_emulated  false (hardware TEEs only)")
        k = agreement.update_quorum.k
        typer.echo(f"update quorum   {k} of {len(agreement.parties)}")
        if agreement.valid_from or agreement.not_after:
            typer.echo(f"validity    {agreement.valid_from or '-'} .. {agreement.not_after or '-'}")
        typer.echo("parties:")
        for name, spec in sorted(agreement.parties.items()):
            status = _signature_status(signed, name, spec.sign_key)
            typer.echo(f"  {name:<24} {','.join(spec.roles):<32} {status}")
        if stale:
            typer.secho("signature file is STALE (made over another digest)", fg="yellow")
        typer.echo(
            f"workloads   {', '.join(sorted(agreement.workloads)) or '- (none can attest yet)'}"
        )
        for name, pkg in sorted(agreement.packages.items()):
            typer.echo(f"package     {name} {pkg.digest} readers={','.join(pkg.readers)}")
        for kind, names in sorted(agreement.outputs.items()):
            typer.echo(f"outputs     {kind}: {', '.join(names) or '-'}")
        caps = agreement.fl
        if caps.max_examples is None and not caps.max_examples_per_party:
            typer.echo("fl weights  unbounded (no fl.max_examples: num_examples used as reported)")
        else:
            per = sorted(caps.max_examples_per_party.items())
            per_party = ", ".join(f"{n}={c}" for n, c in per)
            typer.echo(
                f"fl weights  num_examples clipped to {caps.max_examples or '-'}"
                + (f" (per party: {per_party})" if per_party else "")
            )
        try:
            if previous is not None:
                verify_update(signed, load_signed(previous))
            elif agreement.version == 1:
                verify_initial(signed)
            else:
                typer.echo("status      update: check the quorum with --previous CURRENT.yaml")
                return
        except (PolicyViolation, VerificationError) as exc:
            typer.echo(f"status      INCOMPLETE / NOT ACCEPTABLE: {exc}")
            return
        typer.echo("status      complete: acceptable as signed")

    @grp.command("diff")
    def diff(
        old: Annotated[Path, typer.Argument(help="Old agreement YAML.")],
        new: Annotated[Path, typer.Argument(help="New agreement YAML.")],
        as_json: JsonOption = False,
    ) -> None:
        """Human-readable structural diff of two agreements."""
        a, b = FederationAgreement.load(old), FederationAgreement.load(new)
        da = digest(a).hex()
        successor = b.previous == da and b.version == a.version + 1 and b.federation == a.federation
        if as_json:
            echo_json({"old": {"path": str(old), "version": a.version, "digest": da},
                       "new": {"path": str(new), "version": b.version,
                               "digest": digest(b).hex()},
                       "successor": successor, "changes": diff_agreements(a, b)})
            return
        typer.echo(f"old {old}: version {a.version} digest {da}")
        typer.echo(f"new {new}: version {b.version} digest {digest(b).hex()}")
        if b.previous == da and b.version == a.version + 1 and b.federation == a.federation:
            typer.echo("new is a well-formed successor of old (previous, version, federation)")
        else:
            typer.echo("note: new is NOT a direct successor of old (previous/version/federation)")
        lines = diff_agreements(a, b)
        for line in lines:
            typer.echo(line)
        if not lines:
            typer.echo("no differences")

    app.add_typer(grp, name="agreement")
