"""CLI commands: ``teeflow resource put`` (a data owner uploads a wrapped key + signed grant).

``teeflow resource put --name REPO/TYPE/TAG --file KEY --grant GRANT.yaml --party P
[--pin PIN] [--dir DIR] [--agreement AGREEMENT.yaml]``:

1. reads the data key (``teeflow-key:v1:`` key file, :mod:`teeflow.sealing.keys`);
2. reads the grant YAML (:class:`teeflow.kbs.policy.grants.Grant`) and fills what it may omit:
   ``resource`` (= NAME), ``owner`` (= P), ``id`` (fresh random), ``created_at`` (now),
   ``agreement`` (digest of ``--agreement FILE``, else the pinned agreement digest); given
   values must agree with NAME and P;
3. signs the grant with P's key, wraps the key with HPKE to the *pinned* KBS HPKE key, signs
   the upload and sends it (:meth:`teeflow.kbs.client.sdk.KbsClient.put_resource`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from teeflow.cli.output import JsonOption
from teeflow.errors import KbsError, ParseError

__all__ = ["complete_grant", "register"]


def complete_grant(
    doc: Any,
    *,
    name: str,
    party: str,
    agreement_digest: str | None,
    now: datetime,
) -> dict[str, Any]:
    """Fill the members a grant YAML may omit (module docstring) and check the given ones.

    Raises:
        ParseError: not a mapping, or ``resource``/``owner`` disagree with NAME/P, or no
            agreement digest is known.
    """
    from teeflow.kbs.policy.grants import new_grant_id

    if not isinstance(doc, dict):
        raise ParseError("grant file must be a mapping")
    out = dict(doc)
    for key, value in (("resource", name), ("owner", party)):
        if out.setdefault(key, value) != value:
            raise ParseError(f"grant {key} is {out[key]!r}, not {value!r}")
    out.setdefault("id", new_grant_id())
    out.setdefault("created_at", now.isoformat())
    if "agreement" not in out:
        if agreement_digest is None:
            raise ParseError("grant has no agreement digest: add it or pass --agreement FILE")
        out["agreement"] = agreement_digest
    return out


def register(app: typer.Typer) -> None:
    """Add the ``resource`` command group to the root app."""
    grp = typer.Typer(name="resource", help="Resources (data keys) held by the KBS.")

    @grp.command("put")
    def put(
        name: Annotated[str, typer.Option("--name", help="Resource path repo/type/tag.")],
        file: Annotated[Path, typer.Option("--file", help="Data key file (teeflow-key:v1).")],
        grant: Annotated[Path, typer.Option("--grant", help="Grant YAML (unsigned).")],
        party: Annotated[str, typer.Option("--party", help="Owning party (its keys sign).")],
        pin: Annotated[
            Path | None, typer.Option("--pin", help="KBS pin file (default: $TEEFLOW_HOME).")
        ] = None,
        key_dir: Annotated[
            Path | None, typer.Option("--dir", help="Party key directory.")
        ] = None,
        agreement: Annotated[
            Path | None,
            typer.Option("--agreement", help="Agreement YAML whose digest the grant names."),
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Wrap KEY to the pinned KBS, sign GRANT and upload both."""
        from teeflow.attestation.policy import load_policy_document
        from teeflow.kbs.client.pinning import (
            Pin,
            default_pin_path,
        )
        from teeflow.kbs.client.sdk import (
            KbsClient,
        )
        from teeflow.kbs.policy.agreement import FederationAgreement, digest
        from teeflow.kbs.policy.grants import Grant, sign_grant
        from teeflow.kbs.policy.parties import PartyKeys, party_dir
        from teeflow.sealing.keys import read_key_file

        pin_path = pin if pin is not None else default_pin_path()
        if not pin_path.is_file():
            raise KbsError(f"no pin file at {pin_path}: run 'teeflow kbs verify' first")
        pinned = Pin.load(pin_path)
        keys = PartyKeys.load_dir(key_dir or party_dir(party), party)
        data_key = read_key_file(file)
        agreement_digest = (
            digest(FederationAgreement.load(agreement)).hex()
            if agreement is not None
            else pinned.agreement_digest
        )
        doc = complete_grant(
            load_policy_document(grant),
            name=name,
            party=party,
            agreement_digest=agreement_digest,
            now=datetime.now(UTC),
        )
        signed = sign_grant(Grant.from_mapping(doc), keys)
        with KbsClient(None, pinned) as client:
            info = client.put_resource(name, data_key, signed, keys)
        if as_json:
            import json

            typer.echo(json.dumps({
                "path": info.path, "generation": info.generation, "owner": info.owner,
                "grant_id": info.grant_id, "grant_digest": info.grant_digest,
                "max_releases": info.max_releases, "not_after": str(info.not_after),
            }))
            return
        typer.echo(f"resource {info.path} stored (generation {info.generation})")
        typer.echo(f"  owner {info.owner}  grant {info.grant_id}  digest {info.grant_digest}")
        typer.echo(f"  max releases {info.max_releases}  not after {info.not_after}")

    app.add_typer(grp, name="resource")
