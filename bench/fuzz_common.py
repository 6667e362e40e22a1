"""Shared driver of the parser fuzz harnesses (``bench/fuzz_*.py``).

Each harness defines a *target* ``(data: bytes) -> None`` that feeds one parser and a set
of *allowed* exception types (normally only :class:`teeflow.errors.ParseError`). Any other
exception escaping the target is a crash: the driver stops, prints the traceback and the
path of the saved input, and exits non-zero.

Engines:

* `atheris <https://github.com/google/atheris>`_ (libFuzzer, coverage-guided; installed by
  the ``dev`` extra) when importable — the default;
* a pure-Python fallback (seed corpus + random byte mutations, no coverage feedback) when
  atheris is missing or ``--engine python`` is given. Same command line, same output.

Command line (every harness)::

    python bench/fuzz_X.py [-atheris_runs=N] [--seconds S] [--engine atheris|python]
                           [--max-len BYTES] [other libFuzzer -flags ...]

``--seconds S`` stops after S seconds of fuzzing (libFuzzer ``-max_total_time``);
``-atheris_runs=N`` after N executions. At exit the driver prints one line::

    fuzz-result name=<harness> engine=<engine> executions=<N> crashes=<0|1> seconds=<T>

which :mod:`bench.fuzz_all` parses. The seed corpus is written to a temporary directory
from the real evidence in ``../shared/testdata/attestation`` (``TEEFLOW_SHARED`` overrides
``../shared``) plus the small synthetic seeds each harness adds; crash inputs are saved
under ``$TMPDIR/teeflow-fuzz/<name>/``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import os
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

__all__ = [
    "ATTESTATION",
    "REPO",
    "Harness",
    "attestation_files",
    "main",
    "with_selector",
]

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TEEFLOW_SHARED", REPO.parent / "shared"))
ATTESTATION = SHARED / "testdata" / "attestation"

if str(REPO / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO / "src"))

Target = Callable[[bytes], None]


def attestation_files(*patterns: str) -> list[bytes]:
    """Contents of the shared attestation files matching the glob ``patterns`` (sorted;
    empty when the shared vectors are absent)."""
    out: list[bytes] = []
    if not ATTESTATION.is_dir():
        return out
    for pattern in patterns:
        out.extend(p.read_bytes() for p in sorted(ATTESTATION.glob(pattern)) if p.is_file())
    return out


def with_selector(selector: int, seeds: Iterable[bytes]) -> list[bytes]:
    """Prefix each seed with one selector byte (harnesses that dispatch on ``data[0]``)."""
    return [bytes([selector]) + s for s in seeds]


class Harness:
    """One fuzz target: ``name``, ``target``, allowed exception types, seed corpus.

    Args:
        name: short name (``"dcap_quote"``), used in output and crash paths.
        target: feeds one input to the parser; returns normally or raises an allowed type.
        allowed: exception types that are the parser's contract (never crashes).
        seeds: the seed corpus (callable so that building it happens after instrumentation).
        max_len: largest input libFuzzer generates (bytes).
    """

    def __init__(
        self,
        name: str,
        target: Target,
        *,
        allowed: tuple[type[BaseException], ...],
        seeds: Callable[[], Sequence[bytes]],
        max_len: int = 16384,
    ) -> None:
        self.name = name
        self.target = target
        self.allowed = allowed
        self.seeds = seeds
        self.max_len = max_len
        self.executions = 0
        self.crashes = 0
        self.started = time.monotonic()
        self.engine = "none"

    def one(self, data: bytes) -> None:
        """Run the target once; allowed exceptions are swallowed, others propagate."""
        self.executions += 1
        with contextlib.suppress(*self.allowed):
            self.target(data)

    def crash_dir(self) -> Path:
        """Where crashing inputs are saved."""
        d = Path(tempfile.gettempdir()) / "teeflow-fuzz" / self.name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def report(self) -> None:
        """Print the ``fuzz-result`` line (registered with :mod:`atexit`)."""
        seconds = time.monotonic() - self.started
        print(
            f"fuzz-result name={self.name} engine={self.engine} executions={self.executions} "
            f"crashes={self.crashes} seconds={seconds:.1f}",
            file=sys.stderr,
            flush=True,
        )


def _mutate(rng: random.Random, data: bytes, corpus: Sequence[bytes], max_len: int) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 4, 8))):
        op = rng.randrange(8)
        if op == 0 and buf:  # bit flip
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # random byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2 and buf:  # interesting integer at a random offset
            i = rng.randrange(len(buf))
            value = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFFFFFFFF, len(buf)))
            raw = value.to_bytes(8, "little")[: rng.choice((1, 2, 4, 8))]
            buf[i : i + len(raw)] = raw
        elif op == 3 and buf:  # truncate
            del buf[rng.randrange(len(buf)) :]
        elif op == 4 and buf:  # delete a range
            i = rng.randrange(len(buf))
            del buf[i : i + rng.randrange(1, 64)]
        elif op == 5:  # insert random bytes
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = rng.randbytes(rng.randrange(1, 16))
        elif op == 6 and buf:  # duplicate a range
            i = rng.randrange(len(buf))
            buf[i:i] = buf[i : i + rng.randrange(1, 128)]
        elif corpus:  # splice with another seed
            other = rng.choice(corpus)
            cut = rng.randrange(len(buf) + 1)
            buf = buf[:cut] + other[rng.randrange(len(other) + 1) :]
    return bytes(buf[:max_len])


def _python_engine(h: Harness, runs: int | None, seconds: float | None, seed: int) -> int:
    rng = random.Random(seed)
    corpus = [bytes(s) for s in h.seeds()] or [b""]
    deadline = None if seconds is None else time.monotonic() + seconds
    i = 0
    for s in corpus:  # seeds themselves first
        _run_checked(h, s)
    while (runs is None or h.executions < runs) and (
        deadline is None or (i % 256 != 0 or time.monotonic() < deadline)
    ):
        i += 1
        _run_checked(h, _mutate(rng, rng.choice(corpus), corpus, h.max_len))
    return 0


def _run_checked(h: Harness, data: bytes) -> None:
    try:
        h.one(data)
    except Exception:
        h.crashes += 1
        path = h.crash_dir() / f"crash-{hashlib.sha1(data).hexdigest()}"
        path.write_bytes(data)
        traceback.print_exc()
        print(f"CRASH in {h.name}: input saved to {path}", file=sys.stderr, flush=True)
        sys.exit(1)


def _atheris_engine(h: Harness, runs: int | None, seconds: float | None, extra: list[str]) -> int:
    import atheris

    corpus_dir = Path(tempfile.mkdtemp(prefix=f"teeflow-fuzz-{h.name}-"))
    for i, s in enumerate(h.seeds()):
        (corpus_dir / f"seed-{i:04d}").write_bytes(bytes(s)[: max(h.max_len, len(s))])
    args = [sys.argv[0], f"-max_len={h.max_len}", "-timeout=20", "-rss_limit_mb=4096"]
    args.append(f"-artifact_prefix={h.crash_dir()}/")
    if runs is not None:
        args.append(f"-atheris_runs={runs}")
    if seconds is not None:  # backstop only: the deadline below ends the run and reports
        args.append(f"-max_total_time={max(1, round(seconds)) + 30}")
    args += extra
    args.append(str(corpus_dir))
    deadline = None if seconds is None else time.monotonic() + seconds

    def target(data: bytes) -> None:
        # libFuzzer's -max_total_time exits without running atexit handlers: stop here.
        if deadline is not None and h.executions % 128 == 0 and time.monotonic() > deadline:
            h.report()
            sys.stdout.flush()
            os._exit(0)
        try:
            h.one(data)
        except Exception:
            h.crashes += 1
            raise

    atheris.Setup(args, target)
    atheris.Fuzz()
    return 0


def main(make: Callable[[], Harness], argv: Sequence[str] | None = None) -> int:
    """Parse the command line, build the harness (under atheris instrumentation when
    available) and fuzz. Exits non-zero on a crash."""
    parser = argparse.ArgumentParser(description=__doc__, add_help=True)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--engine", choices=("atheris", "python"), default=None)
    parser.add_argument("--seed", type=int, default=0, help="python engine RNG seed")
    parser.add_argument("--max-len", type=int, default=None)
    known, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    runs: int | None = None
    extra: list[str] = []
    for arg in rest:
        if arg.startswith(("-atheris_runs=", "-runs=")):
            runs = int(arg.split("=", 1)[1])
        else:
            extra.append(arg)
    engine = known.engine
    if engine is None:
        try:
            import atheris

            engine = "atheris"
        except ImportError:
            engine = "python"
    if engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["teeflow"]):
            h = make()
    else:
        h = make()
    if known.max_len is not None:
        h.max_len = known.max_len
    if runs is None and known.seconds is None:
        runs = 10_000
    h.engine = engine
    h.started = time.monotonic()
    atexit.register(h.report)
    if engine == "atheris":
        return _atheris_engine(h, runs, known.seconds, extra)
    return _python_engine(h, runs, known.seconds, known.seed)
