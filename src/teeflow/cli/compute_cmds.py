"""CLI commands: ``teeflow compute serve | measurement | seal | run | open | lineage``
(authorised compute).

Mirrors :mod:`teeflow.compute` for users who script rather than import:

* ``serve --enrollment TOKEN --kbs URL --pin FILE --package PKG [--listen HOST:PORT] [--store DIR]
  [--timeout S] [--max-memory BYTES] [--isolation thread|fork]`` — the compute worker
  (emulated SGX, measurement :func:`teeflow.compute.worker.compute_measurement`);
* ``measurement [PACKAGE_DIR] [--platform P] [--json]`` — that measurement and the package's
  digest, as the agreement's ``workloads.compute`` and ``packages`` entries;
* ``seal FILE --party P --worker URL --allow PKG:FN… --recipient R… [--pin PIN] -o REF`` —
  ``FILE`` by suffix: ``.npy`` (array, no pickle), ``.npz`` (arrays), ``.arrow``
  (Arrow IPC stream or file → table), ``.json``, anything else raw bytes; writes the input
  reference (JSON);
* ``run PKG:FN REF… --party P [--recipient R…] -o RESULT`` — writes the result reference;
* ``open RESULT --party P -o OUT`` — verifies, opens and writes the value (``.npy``, ``.npz``,
  ``.arrow``, ``.json`` or raw bytes by its kind);
* ``lineage RESULT --party P`` — verifies the record and the KBS audit log and shows which
  inputs, owners, grants, function and worker produced the result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from teeflow.cli.enrollment_cmds import EnrollmentOption
from teeflow.cli.output import JsonOption, echo_json
from teeflow.cli.platform_options import (
    GpuOption,
    GramineRootOption,
    PlatformOption,
    TsmRootOption,
    platform_options,
    warn_if_emulated,
)
from teeflow.errors import ParseError

__all__ = ["read_value_file", "register", "write_value_file"]

_MAX_FILE = 4 << 30
_PinOpt = Annotated[
    Path | None, typer.Option("--pin", help="KBS pin file (default: $TEEFLOW_HOME/kbs.pin.json).")
]
_PartyOpt = Annotated[str, typer.Option("--party", help="Acting party (its keys).")]


def read_value_file(path: Path) -> Any:
    """A value from ``path`` by suffix (module docstring).

    Raises:
        ParseError: unreadable or malformed.
    """
    import numpy as np

    try:
        if path.stat().st_size > _MAX_FILE:
            raise ParseError(f"{path} is larger than 4 GiB")
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if path.suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
        if path.suffix == ".arrow":
            import pyarrow as pa  # type: ignore[import-untyped]
            import pyarrow.ipc  # type: ignore[import-untyped]

            data = pa.py_buffer(path.read_bytes())
            try:
                return pa.ipc.open_stream(data).read_all()
            except pa.ArrowInvalid:
                return pa.ipc.open_file(data).read_all()
        return path.read_bytes()
    except ImportError:
        raise ParseError(".arrow files need pyarrow (pip install 'teeflow[tables]')") from None
    except (OSError, ValueError) as exc:
        raise ParseError(f"cannot read {path}: {type(exc).__name__}") from None


def write_value_file(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` with mode 0600 (a decrypted result is plaintext: readable
    by its owner only), atomically: ndarray → ``.npy``, dict of arrays → ``.npz``, table →
    Arrow IPC stream, bytes → raw, other → JSON.

    Raises:
        ParseError: the file cannot be written.
    """
    import io

    import numpy as np

    from teeflow._fs import atomic_write

    data: bytes
    if isinstance(value, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        data = buf.getvalue()
    elif isinstance(value, dict) and value and all(
        isinstance(v, np.ndarray) for v in value.values()
    ):
        buf = io.BytesIO()
        np.savez(buf, **value)
        data = buf.getvalue()
    elif isinstance(value, bytes):
        data = value
    elif type(value).__module__.startswith("pyarrow"):
        import pyarrow as pa
        import pyarrow.ipc

        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as w:
            w.write_table(value)
        data = sink.getvalue().to_pybytes()
    else:
        data = (json.dumps(value, indent=2) + "\n").encode("utf-8")
    try:
        atomic_write(path, data, mode=0o600)
    except OSError as exc:
        raise ParseError(f"cannot write {path}: {exc.strerror or exc}") from None


def _package_info(path: Path) -> dict[str, Any]:
    """Name, version, digest (hex) and functions of a package folder or ``.tar`` archive."""
    import tempfile

    from teeflow.fl.package import build_package, load_manifest, package_digest, unpack_package

    if path.is_dir():
        archive, pkg_digest = build_package(path)
        manifest = load_manifest(path)
    else:
        try:
            archive = path.read_bytes()
        except OSError as exc:
            raise ParseError(f"cannot read {path}: {exc.strerror or exc}") from None
        pkg_digest = package_digest(archive)
        with tempfile.TemporaryDirectory() as tmp:
            manifest = unpack_package(archive, Path(tmp) / "p", pkg_digest)
    del archive
    return {
        "name": manifest.name,
        "version": manifest.version,
        "digest": pkg_digest.hex(),
        "functions": sorted(manifest.functions),
    }


def _party(name: str, pin: Path | None) -> Any:
    from teeflow.compute import Party
    from teeflow.kbs.client.pinning import default_pin_path

    return Party.load(name, pin=pin or default_pin_path())


def register(app: typer.Typer) -> None:
    """Add the ``compute`` command group to the root app."""
    grp = typer.Typer(name="compute", help="Authorised confidential compute (TEEU).",
                      no_args_is_help=True)
    out = Console()

    @grp.command("serve")
    def serve(
        enrollment: EnrollmentOption,
        kbs: Annotated[str | None, typer.Option("--kbs", help="KBS URL (default: pin's).")] = None,
        pin: _PinOpt = None,
        package: Annotated[Path, typer.Option("--package", help="Package .tar or folder.")] = Path(
            "package"),
        listen: Annotated[str, typer.Option("--listen", help="HOST:PORT.")] = "127.0.0.1:9443",
        store: Annotated[Path | None, typer.Option("--store", help="Sealed-input folder.")] = None,
        timeout: Annotated[float, typer.Option("--timeout", help="Seconds per call.")] = 300.0,
        max_memory: Annotated[int | None, typer.Option("--max-memory", help="Bytes.")] = None,
        isolation: Annotated[str, typer.Option("--isolation", help="thread or fork.")] = "thread",
        log_level: Annotated[str, typer.Option("--log-level")] = "info",
        platform: PlatformOption = "auto",
        tsm_root: TsmRootOption = None,
        gramine_root: GramineRootOption = None,
        gpu: GpuOption = "none",
    ) -> None:
        """Run the compute worker (role compute) until interrupted."""
        from teeflow.compute.jobs import ExecutionLimits
        from teeflow.compute.server import serve as run
        from teeflow.kbs.client.pinning import default_pin_path
        from teeflow.kbs.policy.enrollment import load_enrollment

        if isolation not in ("thread", "fork"):
            raise ParseError("--isolation must be thread or fork")
        if max_memory is not None and isolation == "thread":
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))
        limits = ExecutionLimits(timeout=timeout, max_memory=max_memory,
                                 isolation=isolation)  # type: ignore[arg-type]

        options = platform_options(platform, tsm_root, gramine_root)

        def ready(worker: Any) -> None:
            info = worker.info()
            out.print(f"measurement {info['measurement']}")
            out.print(f"platform {info['tee']} (attester {info['attester']})")
            warn_if_emulated(options)
            out.print(f"compute worker for package {worker.package_name} "
                      f"({', '.join(worker.functions)}) on https://{listen}")

        run(kbs, pin or default_pin_path(), package, listen=listen, store_dir=store,
            limits=limits, on_ready=ready, log_level=log_level, platform=options,
            enrollment=load_enrollment(enrollment), gpu=gpu)

    @grp.command("measurement")
    def compute_measurement_cmd(
        package_dir: Annotated[
            Path | None,
            typer.Argument(help="Compute package folder (teeflow.yaml) or .tar (optional)."),
        ] = None,
        platform: Annotated[
            str,
            typer.Option(
                "--platform",
                help="Emulated platform whose agreement entry to print: emulated-sgx, "
                "emulated-tdx or emulated-snp.",
            ),
        ] = "emulated-sgx",
        as_json: JsonOption = False,
    ) -> None:
        """Print the compute worker's measurement (what `compute serve` attests with on an
        emulated platform) and, given PACKAGE_DIR, the package's name, digest and functions:
        the agreement's workloads.compute and packages entries."""
        import yaml

        from teeflow.compute.worker import compute_measurement
        from teeflow.platform.selection import emulated_workload_spec

        mr = compute_measurement()
        agreement: dict[str, Any] = {
            "workloads": {"compute": emulated_workload_spec(platform, mr)}
        }
        doc: dict[str, Any] = {"measurement": mr.hex(), "platform": platform}
        if package_dir is not None:
            doc["package"] = _package_info(package_dir)
            info = doc["package"]
            agreement["packages"] = {
                info["name"]: {"digest": info["digest"], "functions": info["functions"]}
            }
        doc["agreement"] = agreement
        if as_json:
            typer.echo(json.dumps(doc, indent=2))
            return
        typer.echo(f"measurement {mr.hex()}")
        if package_dir is not None:
            info = doc["package"]
            typer.echo(f"package {info['name']} {info['version']} digest {info['digest']}")
        typer.echo(f"# agreement entries ({platform}):")
        typer.echo(yaml.safe_dump(agreement, sort_keys=False).rstrip())

    @grp.command("seal")
    def seal(
        file: Annotated[Path, typer.Argument(help="Value file (.npy .npz .arrow .json raw).")],
        party: _PartyOpt,
        worker: Annotated[str, typer.Option("--worker", help="Worker URL.")],
        allow: Annotated[list[str], typer.Option("--allow", help="PKG:FN allowed.")],
        recipient: Annotated[list[str], typer.Option("--recipient", help="Result recipient.")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Input reference file.")],
        pin: _PinOpt = None,
        max_releases: Annotated[int, typer.Option(
            "--max-releases", help="How many jobs may use the input.")] = 16,
        with_owner: Annotated[list[str] | None, typer.Option(
            "--with-owner", help="A party that must own another input of every job "
            "(repeatable).")] = None,
        min_owners: Annotated[int, typer.Option(
            "--min-owners", min=1, help="Distinct owners every job's inputs must have "
            "(2 for a joint function).")] = 1,
        as_json: JsonOption = False,
    ) -> None:
        """Seal FILE for the worker and grant it to the allowed functions."""
        with _party(party, pin) as p:
            ref = p.seal(read_value_file(file), allow=allow, recipients=recipient,
                         to=p.teeu(worker), max_releases=max_releases,
                         co_owners=with_owner or (), min_owners=min_owners)
        output.write_text(ref.model_dump_json(indent=2) + "\n", encoding="utf-8")
        if as_json:
            echo_json({"input_id": ref.id, "size": ref.size, "reference": str(output)})
            return
        out.print(f"sealed {file} as {ref.id} ({ref.size} bytes) -> {output}")

    @grp.command("run")
    def run_job(
        function: Annotated[str, typer.Argument(help="PKG:FN.")],
        refs: Annotated[list[Path], typer.Argument(help="Input reference files, in order.")],
        party: _PartyOpt,
        output: Annotated[Path, typer.Option("-o", "--output", help="Result reference file.")],
        recipient: Annotated[list[str] | None, typer.Option(
            "--recipient", help="Result recipient (repeatable; default: the inputs').")] = None,
        pin: _PinOpt = None,
        as_json: JsonOption = False,
    ) -> None:
        """Run FUNCTION over the sealed inputs; the result stays sealed."""
        from teeflow.compute import SealedInput

        inputs = [SealedInput.model_validate_json(r.read_text(encoding="utf-8")) for r in refs]
        workers = {i.worker for i in inputs}
        if len(workers) != 1:
            raise ParseError("all inputs must be sealed at the same worker")
        with _party(party, pin) as p:
            result = p.teeu(workers.pop()).run(function, *inputs, recipients=recipient or None)
        output.write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
        if as_json:
            echo_json({"result_id": result.result_id, "recipients": list(result.recipients),
                       "reference": str(output)})
            return
        out.print(f"result {result.result_id} sealed to {', '.join(result.recipients)} "
                  f"-> {output}")

    @grp.command("open")
    def open_result(
        result: Annotated[Path, typer.Argument(help="Result reference file.")],
        party: _PartyOpt,
        output: Annotated[Path, typer.Option("-o", "--output", help="Where to write it.")],
        pin: _PinOpt = None,
        as_json: JsonOption = False,
    ) -> None:
        """Verify and open a result this party is a recipient of (written with mode 0600)."""
        from teeflow.compute import ResultRef

        ref = ResultRef.from_json(result.read_bytes())
        with _party(party, pin) as p:
            value = p.open(ref)
        write_value_file(output, value)
        if as_json:
            echo_json({"result_id": ref.result_id, "kind": ref.lineage.record.result.kind,
                       "path": str(output)})
            return
        out.print(f"opened result {ref.result_id} ({ref.lineage.record.result.kind}) -> {output}")

    @grp.command("lineage")
    def lineage(
        result: Annotated[Path, typer.Argument(help="Result reference file.")],
        party: _PartyOpt,
        pin: _PinOpt = None,
        as_json: JsonOption = False,
    ) -> None:
        """Show (and verify) which inputs, function and worker produced a result."""
        from teeflow.compute import ResultRef

        ref = ResultRef.from_json(result.read_bytes())
        with _party(party, pin) as p:
            audit = p.audit_lineage(ref)
        rec = ref.lineage.record
        if as_json:
            echo_json({
                "verified": True, "result_id": rec.result_id, "package": rec.package.name,
                "package_digest": rec.package.digest, "function": rec.function,
                "kind": rec.result.kind, "recipients": list(rec.recipients),
                "worker": {"tee": rec.worker.tee, "emulated": rec.worker.emulated,
                           "measurement": rec.worker.measurement},
                "audit_seq": audit.counter_seq, "recorded_at": audit.recorded_at.isoformat(),
                "inputs": [
                    {"input_id": i, "owner": audit.grants.get(i, ("?", "?"))[0],
                     "grant": audit.grants.get(i, ("?", "?"))[1], "release_seq": seq}
                    for i, seq in audit.releases
                ],
            })
            return
        out.print(f"result {rec.result_id}: {rec.package.name}:{rec.function} "
                  f"(package {rec.package.digest[:16]}…) -> {rec.result.kind}, sealed to "
                  f"{', '.join(rec.recipients)}")
        emulated = " EMULATED" if rec.worker.emulated else ""
        out.print(f"worker {rec.worker.tee}{emulated} measurement {rec.worker.measurement}")
        out.print(f"recorded in the KBS audit log at seq {audit.counter_seq} "
                  f"({audit.recorded_at.isoformat()})")
        table = Table("input", "owner", "grant", "release seq")
        for input_id, seq in audit.releases:
            owner, grant = audit.grants.get(input_id, ("?", "?"))
            table.add_row(input_id, owner, grant[:16] + "…", str(seq))
        out.print(table)
        out.print("lineage verified")

    app.add_typer(grp)
