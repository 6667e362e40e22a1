"""Benchmark: sealed-blob throughput vs raw AES-256-GCM, and streaming peak memory.

Measured in the same run:

- baseline: ``AESGCM.encrypt_into`` over the same data in 1 MiB chunks into one reused
  1 MiB output buffer (cryptography, no framing, no allocation);
- baseline (fresh output): the same into a freshly allocated whole-size output buffer,
  i.e. including the first-touch page faults any API returning a new buffer pays;
- teeflow ``seal`` / ``unseal`` (new ``bytes`` returned) on ``--size-mib`` MiB;
- teeflow ``seal_into`` / ``unseal_into`` into caller-owned, reused buffers;
- the in-memory cases again in a child process with glibc malloc tuned to reuse heap
  memory for large buffers (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``), which
  removes most first-touch page faults of the fresh output buffer;
- peak RSS (``VmHWM``, else ``ru_maxrss``) of a child process running ``seal_file`` and then
  ``unseal_file`` on a ``--file-gib`` GiB file (target <= 64 MiB).

Throughputs are medians over ``--reps`` runs (cases interleaved round-robin) after one
warm-up run. Targets: seal and
unseal >= 0.7 x baseline; streaming peak RSS <= 64 MiB. Prints a table and writes
``bench/results/sealing.json``.

Usage: .venv/bin/python bench/sealing.py [--size-mib 256] [--file-gib 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from _common import machine, write_json
from teeflow.sealing import (
    DEFAULT_CHUNK_SIZE,
    seal,
    seal_into,
    sealed_size,
    unseal,
    unseal_into,
)

MIB = 1 << 20
CHUNK = MIB

CHILD = r"""
import json, resource, sys, time
from teeflow.sealing import seal_file, unseal_file


def hwm_kib():
    # VmHWM is per address space, so it starts afresh at exec; ru_maxrss is inherited
    # across fork+exec on Linux and would report the parent's size.
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


src, sealed, back = sys.argv[1], sys.argv[2], sys.argv[3]
key = bytes(range(32))
base = hwm_kib()
t0 = time.perf_counter(); n = seal_file(src, sealed, key, aad=b"bench"); t1 = time.perf_counter()
after_seal = hwm_kib()
unseal_file(sealed, back, key, aad=b"bench"); t2 = time.perf_counter()
after_unseal = hwm_kib()
print(json.dumps({"bytes": n, "rss_after_imports_kib": base, "peak_rss_seal_kib": after_seal,
                  "peak_rss_unseal_kib": after_unseal, "seal_file_s": t1 - t0,
                  "unseal_file_s": t2 - t1}))
"""


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def _interleaved_rates(
    cases: dict[str, Callable[[], object]], nbytes: int, reps: int
) -> dict[str, dict[str, float]]:
    """Time every case ``reps`` times, round-robin, so background load hits all alike."""
    for fn in cases.values():
        fn()  # warm-up: first touch of fresh memory is much slower on some VMs
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            result = fn()
            samples[name].append(time.perf_counter() - t0)
            del result
    return {
        name: {
            "median_s": statistics.median(times),
            "gb_per_s": _gbps(nbytes, statistics.median(times)),
            "best_gb_per_s": _gbps(nbytes, min(times)),
        }
        for name, times in samples.items()
    }


def throughput(size: int, reps: int) -> dict[str, Any]:
    """All in-memory throughput numbers on ``size`` bytes."""
    key = os.urandom(32)
    data = os.urandom(size)
    view = memoryview(data)
    aead = AESGCM(key)
    nonce = os.urandom(12)
    hot = bytearray(CHUNK + 16)

    def baseline() -> None:
        for off in range(0, size, CHUNK):
            aead.encrypt_into(nonce, view[off : off + CHUNK], b"", hot)

    def baseline_fresh() -> bytes:
        n = -(-size // CHUNK)
        buf = io.BytesIO(bytes(size + 16 * n))
        with buf.getbuffer() as out:
            for i, off in enumerate(range(0, size, CHUNK)):
                end = min(off + CHUNK, size)
                o = off + 16 * i
                aead.encrypt_into(nonce, view[off:end], b"", out[o : o + end - off + 16])
        return buf.getvalue()

    blob = seal(data, key)
    assert unseal(blob, key) == data
    sealed_buf = bytearray(sealed_size(size, DEFAULT_CHUNK_SIZE))
    plain_buf = bytearray(size)
    cases: dict[str, Callable[[], object]] = {
        "baseline_encrypt_into_1mib": baseline,
        "baseline_fresh_output": baseline_fresh,
        "seal": lambda: seal(data, key),
        "unseal": lambda: unseal(blob, key),
        "seal_into_reused_buffer": lambda: seal_into(data, key, sealed_buf),
        "unseal_into_reused_buffer": lambda: unseal_into(blob, key, plain_buf),
    }
    results = _interleaved_rates(cases, size, reps)
    base = results["baseline_encrypt_into_1mib"]["gb_per_s"]
    fresh = results["baseline_fresh_output"]["gb_per_s"]
    for row in results.values():
        row["ratio_vs_baseline"] = row["gb_per_s"] / base
        row["ratio_vs_fresh_output_baseline"] = row["gb_per_s"] / fresh
    return results


def streaming_rss(file_gib: float) -> dict[str, Any]:
    """Peak RSS of seal_file + unseal_file on a ``file_gib`` GiB file, in a child process."""
    size = int(file_gib * 1024 * MIB)
    with tempfile.TemporaryDirectory(prefix="teeflow-bench-") as tmp:
        src, sealed, back = Path(tmp, "plain"), Path(tmp, "sealed"), Path(tmp, "back")
        block = os.urandom(16 * MIB)
        with open(src, "wb") as fh:
            for off in range(0, size, len(block)):
                fh.write(block[: min(len(block), size - off)])
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(src), str(sealed), str(back)],
            capture_output=True,
            text=True,
            check=True,
        )
        out: dict[str, Any] = json.loads(proc.stdout)
        out["output_matches"] = back.stat().st_size == size and _same(src, back)
        out["sealed_bytes"] = sealed.stat().st_size
    out["file_bytes"] = size
    out["peak_rss_mib"] = max(out["peak_rss_seal_kib"], out["peak_rss_unseal_kib"]) / 1024
    out["rss_after_imports_mib"] = out["rss_after_imports_kib"] / 1024
    out["seal_file_gb_per_s"] = _gbps(size, out["seal_file_s"])
    out["unseal_file_gb_per_s"] = _gbps(size, out["unseal_file_s"])
    return out


def _same(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(16 * MIB), fb.read(16 * MIB)
            if x != y:
                return False
            if not x:
                return True


GLIBC_TUNING = {
    # serve big allocations from the reusable heap instead of fresh mmap()s, so a new
    # output buffer does not page-fault every page in again (glibc mallopt(3) tunables)
    "MALLOC_MMAP_THRESHOLD_": str(1 << 32),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 33),
}


def _print_rates(title: str, rates: dict[str, Any]) -> None:
    print(title)
    print(f"{'case':32} {'GB/s':>7} {'vs baseline':>12} {'vs fresh-out':>13}")
    for name, row in rates.items():
        print(
            f"{name:32} {row['gb_per_s']:7.2f} {row['ratio_vs_baseline']:11.2f}x"
            f" {row['ratio_vs_fresh_output_baseline']:12.2f}x"
        )


def _tuned_child(size_mib: int, reps: int) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--size-mib",
            str(size_mib),
            "--reps",
            str(reps),
            "--throughput-json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GLIBC_TUNING},
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--file-gib", type=float, default=1.0)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-tuned", action="store_true", help="skip the glibc-tuned run")
    parser.add_argument("--throughput-json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    size = args.size_mib * MIB
    if args.throughput_json:
        print(json.dumps(throughput(size, args.reps)))
        return
    # children run first, while this process is still small
    rss = None if args.skip_rss else streaming_rss(args.file_gib)
    tuned = None if args.skip_tuned else _tuned_child(args.size_mib, args.reps)
    rates = throughput(size, args.reps)
    _print_rates(f"in-memory, {args.size_mib} MiB, chunk 1 MiB, median of {args.reps}", rates)
    if tuned is not None:
        _print_rates("\nsame, child process with glibc malloc tuning " + str(GLIBC_TUNING), tuned)
    if rss is not None:
        print(
            f"\nstreaming {args.file_gib:g} GiB (child process): peak RSS "
            f"{rss['peak_rss_mib']:.1f} MiB (after imports {rss['rss_after_imports_mib']:.1f} MiB;"
            f" target <= 64 MiB); seal_file {rss['seal_file_gb_per_s']:.2f} GB/s, "
            f"unseal_file {rss['unseal_file_gb_per_s']:.2f} GB/s; round trip ok: "
            f"{rss['output_matches']}"
        )
    payload = {
        "benchmark": "sealing",
        "machine": machine(),
        "load_average_at_end": os.getloadavg(),
        "size_bytes": size,
        "chunk_size": DEFAULT_CHUNK_SIZE,
        "reps": args.reps,
        "throughput": rates,
        "throughput_glibc_tuned": tuned,
        "glibc_tuning_env": GLIBC_TUNING,
        "targets": {
            "seal_ratio_min": 0.7,
            "unseal_ratio_min": 0.7,
            "seal_ratio": rates["seal"]["ratio_vs_baseline"],
            "unseal_ratio": rates["unseal"]["ratio_vs_baseline"],
            "seal_ratio_glibc_tuned": None if tuned is None else tuned["seal"]["ratio_vs_baseline"],
            "unseal_ratio_glibc_tuned": (
                None if tuned is None else tuned["unseal"]["ratio_vs_baseline"]
            ),
            "streaming_peak_rss_mib_max": 64,
            "streaming_peak_rss_mib": None if rss is None else rss["peak_rss_mib"],
        },
        "streaming": rss,
    }
    path = write_json("sealing", payload, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
