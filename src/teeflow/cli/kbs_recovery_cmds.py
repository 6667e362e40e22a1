"""CLI: ``teeflow kbs recovery-share save`` and ``teeflow kbs recover`` (party side of KBS
recovery, :mod:`teeflow.kbs.client.recovery`; ``docs/kbs.md`` "Recovery").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from teeflow.cli.output import JsonOption
from teeflow.errors import KbsError

__all__ = ["register_recovery"]

_Party = Annotated[str, typer.Option("--party", help="Your party name (keys in $TEEFLOW_HOME).")]


def register_recovery(kbs: typer.Typer) -> None:
    """Add ``recovery-share`` and ``recover`` to the ``kbs`` command group."""
    share_app = typer.Typer(name="recovery-share", help="Your share of the KBS recovery secret.")

    @share_app.command("save")
    def save_cmd(
        party: _Party,
        pin: Annotated[
            Path | None,
            typer.Option(
                "--pin", help="Pin file from 'teeflow kbs verify' (default $TEEFLOW_HOME)."
            ),
        ] = None,
        output: Annotated[
            Path | None,
            typer.Option(
                "-o",
                "--output",
                help="Share file (default $TEEFLOW_HOME/parties/NAME/kbs-recovery-share.json).",
            ),
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Fetch the KBS share-set record, check your share opens, and save it (0600)."""
        from teeflow.kbs.client.pinning import Pin, default_pin_path
        from teeflow.kbs.client.recovery import default_share_path, fetch_share
        from teeflow.kbs.policy.parties import PartyKeys

        pin_path = pin if pin is not None else default_pin_path()
        if not pin_path.is_file():
            raise KbsError(f"no pin file at {pin_path}: run 'teeflow kbs verify' first")
        share = fetch_share(Pin.load(pin_path), PartyKeys.load(party))
        path = share.save(output if output is not None else default_share_path(party))
        record = share.parsed_record()
        info = {
            "party": party,
            "path": str(path),
            "recovery_id": share.recovery_id,
            "k": record.k,
            "n": len(record.parties),
            "agreement_version": record.agreement_version,
        }
        if as_json:
            typer.echo(json.dumps(info))
            return
        typer.echo(f"recovery share of {party} saved to {path}")
        typer.echo(f"  recovery id {share.recovery_id}")
        typer.echo(f"  {record.k} of {len(record.parties)} parties restore the KBS")

    @kbs.command("recover")
    def recover_cmd(
        url: Annotated[str, typer.Argument(help="URL of the KBS in recovery mode.")],
        party: _Party,
        agreement: Annotated[
            Path,
            typer.Option(
                "--agreement",
                help="The agreement in force (YAML); its workloads.kbs must name the KBS.",
            ),
        ],
        share: Annotated[
            Path | None,
            typer.Option("--share", help="Share file (default: as 'recovery-share save')."),
        ] = None,
        allow_emulated: Annotated[
            bool, typer.Option("--allow-emulated", help="Accept an EMULATED KBS (development).")
        ] = False,
        collateral_dir: Annotated[
            list[Path] | None,
            typer.Option(
                "--collateral-dir",
                help="Intel collateral directory for a hardware KBS's quote (repeat).",
            ),
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Verify the recovering KBS's evidence, then submit your share to its attested key."""
        from datetime import UTC, datetime

        from teeflow.attestation.trust import intel_sgx_root_ca
        from teeflow.kbs.client.recovery import ShareFile, default_share_path, recover
        from teeflow.kbs.policy.agreement import FederationAgreement
        from teeflow.kbs.policy.parties import PartyKeys
        from teeflow.kbs.service.collateral import (
            CollateralProvider,
            CompositeCollateralProvider,
            DirectoryCollateralProvider,
            EmulatedCollateralProvider,
        )
        from teeflow.platform.emulated import EmulationAuthority
        from teeflow.platform.emulated_snp import emulated_snp_anchor

        now = datetime.now(UTC)
        anchors = [intel_sgx_root_ca()]
        providers: list[CollateralProvider] = []
        if collateral_dir:
            providers.append(DirectoryCollateralProvider(collateral_dir))
        if allow_emulated:
            if EmulationAuthority.existing_trust_anchor(None) is None:
                from teeflow.kbs.client.verification import NO_EMULATION_ROOT

                raise KbsError(NO_EMULATION_ROOT)
            authority = EmulationAuthority.load_or_create(None, now=now)
            anchors.append(authority.trust_anchor())
            anchors.append(emulated_snp_anchor(None, now=now))
            providers.append(EmulatedCollateralProvider(authority))
        collateral = CompositeCollateralProvider(providers)
        status = recover(
            url,
            ShareFile.load(share if share is not None else default_share_path(party)),
            PartyKeys.load(party),
            FederationAgreement.load(agreement),
            allow_emulated=allow_emulated,
            anchors=anchors,
            collateral=collateral,
            now=now,
        )
        if as_json:
            typer.echo(json.dumps(status))
            return
        typer.echo(f"share of {party} accepted by the KBS at {url}")
        if status.get("mode") == "recovered":
            typer.echo("  the KBS is recovered and resumes")
        else:
            typer.echo(
                f"  {len(status.get('submitted', []))} of {status.get('k')} shares submitted"
            )

    kbs.add_typer(share_app, name="recovery-share")
