"""``teeflow keygen | seal | unseal``: data keys and sealed files.

- ``keygen [-o FILE] [--force]`` writes a new 32-byte data key in key-file format
  (``docs/formats.md``, "Key file") with permissions 0600, or prints it to stdout.
- ``seal IN OUT --key-file K [--aad TEXT]`` and ``unseal IN OUT --key-file K [--aad TEXT]``
  stream in constant memory; ``unseal`` creates OUT only after the whole input
  authenticated. A progress bar is drawn on stderr for inputs of 8 MiB or more when
  stderr is a terminal.

Errors are :class:`teeflow.errors.Error` subclasses; the root CLI prints one line and
exits 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from teeflow.cli.output import JsonOption, echo_json
from teeflow.errors import SealingError
from teeflow.sealing import (
    DEFAULT_CHUNK_SIZE,
    generate_key,
    key_id,
    read_key_file,
    seal_file,
    unseal_file,
    write_key_file,
)
from teeflow.sealing.keys import encode_key_file

__all__ = ["register"]

PROGRESS_MIN_BYTES = 8 * 1024 * 1024

err_console = Console(stderr=True)

KeyFile = Annotated[
    Path, typer.Option("--key-file", "-k", help="Key file written by 'teeflow keygen'.")
]
Aad = Annotated[
    str, typer.Option("--aad", help="Associated data (UTF-8) bound to the blob; needed to unseal.")
]
Force = Annotated[bool, typer.Option("--force", "-f", help="Overwrite OUT if it exists.")]


def register(app: typer.Typer) -> None:
    """Add ``keygen``, ``seal`` and ``unseal`` to the root app."""
    app.command("keygen")(keygen)
    app.command("seal")(seal)
    app.command("unseal")(unseal)


def keygen(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Key file to create (0600). Default: stdout."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite the key file.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Generate a new random 32-byte data key."""
    key = generate_key()
    if output is None:
        if as_json:  # the key itself is the output here (as without --json)
            echo_json({"key_id": key_id(key).hex(), "key_file": encode_key_file(key)})
            return
        sys.stdout.write(encode_key_file(key))
        sys.stdout.flush()
        return
    write_key_file(output, key, force=force)
    if as_json:
        echo_json({"path": str(output), "key_id": key_id(key).hex()})
        return
    err_console.print(f"wrote {output} (key id {key_id(key).hex()})", highlight=False)


def seal(
    src: Annotated[Path, typer.Argument(metavar="IN", help="Plaintext input file.")],
    dst: Annotated[Path, typer.Argument(metavar="OUT", help="Sealed output file.")],
    *,
    key_file: KeyFile,
    aad: Aad = "",
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", help="Plaintext bytes per chunk (4 KiB..64 MiB).")
    ] = DEFAULT_CHUNK_SIZE,
    force: Force = False,
    as_json: JsonOption = False,
) -> None:
    """Seal IN into OUT (chunked AES-256-GCM; format in docs/formats.md)."""
    key = read_key_file(key_file)
    _check_paths(src, dst, force)
    with _progress(src, "sealing") as advance:
        seal_file(src, dst, key, aad=aad.encode(), chunk_size=chunk_size, progress=advance)
    if as_json:
        echo_json(_report(src, dst, key))


def unseal(
    src: Annotated[Path, typer.Argument(metavar="IN", help="Sealed input file.")],
    dst: Annotated[Path, typer.Argument(metavar="OUT", help="Plaintext output file (0600).")],
    *,
    key_file: KeyFile,
    aad: Aad = "",
    force: Force = False,
    as_json: JsonOption = False,
) -> None:
    """Authenticate and decrypt IN into OUT; OUT appears only if everything verified."""
    key = read_key_file(key_file)
    _check_paths(src, dst, force)
    with _progress(src, "unsealing") as advance:
        unseal_file(src, dst, key, aad=aad.encode(), progress=advance)
    if as_json:
        echo_json(_report(src, dst, key))


def _report(src: Path, dst: Path, key: bytes) -> dict[str, object]:
    return {
        "input": str(src),
        "output": str(dst),
        "input_bytes": src.stat().st_size,
        "output_bytes": dst.stat().st_size,
        "key_id": key_id(key).hex(),
    }


def _check_paths(src: Path, dst: Path, force: bool) -> None:
    if not src.is_file():
        raise SealingError(f"{src}: no such file")
    if dst.exists() and not force:
        raise SealingError(f"{dst} exists (use --force to overwrite)")
    if dst.is_dir():
        raise SealingError(f"{dst} is a directory")


@contextmanager
def _progress(src: Path, label: str) -> Iterator[Callable[[int], None] | None]:
    try:
        size = src.stat().st_size
    except OSError:
        size = 0
    if size < PROGRESS_MIN_BYTES or not err_console.is_terminal:
        yield None
        return
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=size)

        def advance(n: int) -> None:
            bar.advance(task, n)

        yield advance
