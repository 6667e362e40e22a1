"""CLI commands: ``teeflow party enroll`` and ``teeflow party revoke-enrollment``, and the
``--enrollment`` option every KBS role takes (:mod:`teeflow.kbs.policy.enrollment`).

``teeflow party enroll --party NAME --role ROLE [--session S] [--expires DURATION]
[--uses N] [--workload-key FILE] [--federation F | --pin PIN] [--dir DIR] -o TOKEN`` signs
an enrollment with NAME's Ed25519 key and writes it (mode 0600) to TOKEN; the workload
operator passes ``--enrollment TOKEN`` to ``aggregator run``, ``client run`` or ``compute
serve``. DURATION is ``<n>s``, ``<n>m``, ``<n>h`` or ``<n>d`` (default ``24h``).

``teeflow party revoke-enrollment --party NAME (--id ID | --token FILE) [--pin PIN]
[--kbs URL] [-o FILE]`` signs a revocation and submits it to the pinned KBS
(``POST /v1/enrollments/revocations``); ``-o`` also keeps a copy.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from teeflow.cli.output import JsonOption
from teeflow.errors import ParseError

__all__ = ["EnrollmentOption", "load_workload_key", "parse_duration", "register"]

#: The ``--enrollment`` option of every role that attests to the KBS (one definition).
EnrollmentOption = Annotated[
    Path,
    typer.Option(
        "--enrollment",
        help="Enrollment token file signed by the party this workload acts for "
        "(teeflow party enroll ... -o FILE); the KBS refuses the workload without it.",
    ),
]

_DURATION = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_KEY_FILE = 16 * 1024


def parse_duration(text: str) -> timedelta:
    """``90s`` / ``30m`` / ``24h`` / ``7d`` → timedelta.

    Raises:
        ParseError: any other text.
    """
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ParseError(f"duration {text[:32]!r}: expected <n>s, <n>m, <n>h or <n>d (e.g. 24h)")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def load_workload_key(path: Path) -> dict[str, Any]:
    """A workload's EC P-256 public key from a JWK JSON file or a PEM public key file.

    Raises:
        ParseError: unreadable, larger than 16 KiB, or not an EC P-256 public key.
    """
    from joserfc.errors import JoseError
    from joserfc.jwk import ECKey

    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_KEY_FILE:
        raise ParseError(f"{path.name} larger than {_MAX_KEY_FILE} bytes")
    try:
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        key = ECKey.import_key(value)
        public = key.as_dict(private=False)
    except (JoseError, ValueError, TypeError, KeyError):
        raise ParseError(f"{path.name} is not an EC P-256 public key (JWK or PEM)") from None
    if public.get("crv") != "P-256":
        raise ParseError(f"{path.name} is not an EC P-256 public key")
    return dict(public)


def _federation(federation: str | None, pin: Path | None) -> str:
    if federation is not None:
        return federation
    from teeflow.kbs.client.pinning import Pin, default_pin_path

    return Pin.load(pin if pin is not None else default_pin_path()).federation


def register(party: typer.Typer) -> None:
    """Add ``enroll`` and ``revoke-enrollment`` to the ``party`` group."""

    @party.command("enroll")
    def enroll(
        name: Annotated[str, typer.Option("--party", help="Enrolling party (its keys sign).")],
        role: Annotated[
            str, typer.Option("--role", help="Workload role: client, aggregator, compute, serve.")
        ],
        output: Annotated[Path, typer.Option("-o", "--output", help="Token file (0600).")],
        session: Annotated[
            str | None, typer.Option("--session", help="Only for this session (FL session).")
        ] = None,
        expires: Annotated[
            str, typer.Option("--expires", help="Validity: <n>s|m|h|d (max 366d).")
        ] = "24h",
        uses: Annotated[
            int | None, typer.Option("--uses", help="At most N attestations (default: no limit).")
        ] = None,
        workload_key: Annotated[
            Path | None,
            typer.Option("--workload-key", help="Bind to this workload public key (JWK/PEM)."),
        ] = None,
        federation: Annotated[
            str | None, typer.Option("--federation", help="Federation (default: the pin's).")
        ] = None,
        pin: Annotated[
            Path | None, typer.Option("--pin", help="KBS pin file (for the federation name).")
        ] = None,
        key_dir: Annotated[Path | None, typer.Option("--dir", help="Party key directory.")] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Sign an enrollment: a workload acts for PARTY in ROLE only with it."""
        from teeflow._fs import atomic_write
        from teeflow.kbs.policy.enrollment import issue_enrollment, read_enrollment
        from teeflow.kbs.policy.parties import PartyKeys

        keys = PartyKeys.load_dir(key_dir, name) if key_dir else PartyKeys.load(name)
        token = issue_enrollment(
            keys,
            federation=_federation(federation, pin),
            role=role,
            now=datetime.now(UTC),
            expires=parse_duration(expires),
            session=session,
            uses=uses,
            workload_key=None if workload_key is None else load_workload_key(workload_key),
        )
        try:
            atomic_write(output, token.encode("ascii") + b"\n")
        except OSError as exc:
            raise ParseError(f"cannot write {output}: {exc.strerror or exc}") from None
        e = read_enrollment(token)
        facts = {"id": e.jti, "federation": e.fed, "party": e.party, "role": str(e.role),
                 "session": e.session, "expires_at": e.expires_at.isoformat(), "uses": e.uses,
                 "workload_key": None if e.cnf is None else e.cnf.jkt, "file": str(output)}
        if as_json:
            typer.echo(json.dumps(facts))
            return
        typer.echo(f"enrollment {e.jti}: {e.party} enrolls a {e.role} workload of {e.fed}")
        typer.echo(f"  session {e.session or 'any'}, uses {e.uses or 'unlimited'}, "
                   f"expires {facts['expires_at']}")
        typer.echo(f"  written to {output} (give it to the workload: --enrollment {output})")

    @party.command("revoke-enrollment")
    def revoke(
        name: Annotated[str, typer.Option("--party", help="The enrolling party (its keys).")],
        enrollment_id: Annotated[
            str | None, typer.Option("--id", help="Enrollment id (printed by enroll).")
        ] = None,
        token_file: Annotated[
            Path | None, typer.Option("--token", help="Or: the enrollment token file.")
        ] = None,
        pin: Annotated[
            Path | None, typer.Option("--pin", help="KBS pin file (default: $TEEFLOW_HOME).")
        ] = None,
        kbs: Annotated[str | None, typer.Option("--kbs", help="KBS URL (default: pin).")] = None,
        output: Annotated[
            Path | None, typer.Option("-o", "--output", help="Also write the revocation here.")
        ] = None,
        key_dir: Annotated[Path | None, typer.Option("--dir", help="Party key directory.")] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Revoke one of PARTY's enrollments at the KBS (refused at every later attestation)."""
        from teeflow._fs import atomic_write
        from teeflow.kbs.client.pinning import Pin, default_pin_path
        from teeflow.kbs.client.sdk import KbsClient
        from teeflow.kbs.policy.enrollment import load_enrollment, read_enrollment, sign_revocation
        from teeflow.kbs.policy.parties import PartyKeys

        if (enrollment_id is None) == (token_file is None):
            raise ParseError("give exactly one of --id ID or --token FILE")
        if token_file is not None:
            enrollment_id = read_enrollment(load_enrollment(token_file)).jti
        assert enrollment_id is not None
        keys = PartyKeys.load_dir(key_dir, name) if key_dir else PartyKeys.load(name)
        pinned = Pin.load(pin if pin is not None else default_pin_path())
        revocation = sign_revocation(
            keys, federation=pinned.federation, enrollment_id=enrollment_id, now=datetime.now(UTC)
        )
        if output is not None:
            try:
                atomic_write(output, revocation.encode("ascii") + b"\n")
            except OSError as exc:
                raise ParseError(f"cannot write {output}: {exc.strerror or exc}") from None
        with KbsClient(kbs, pinned) as client:
            client.revoke_enrollment(revocation)
        if as_json:
            import json

            typer.echo(json.dumps({"enrollment_id": enrollment_id, "party": name,
                                   "revoked": True, "kbs": pinned.url}))
            return
        typer.echo(f"enrollment {enrollment_id} of {name} revoked at {pinned.url}")
