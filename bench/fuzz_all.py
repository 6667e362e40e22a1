"""Run every parser fuzz harness (``bench/fuzz_*.py``) for a fixed time; CI uses it.

    python bench/fuzz_all.py --seconds 30 [--jobs 2] [--only dcap_quote,spdm] [--json OUT]

Harnesses run as subprocesses, ``--jobs`` at a time (default: the number of CPUs, at most
2). Each prints a ``fuzz-result`` line (see :mod:`fuzz_common`); this runner collects the
execution counts and exits 1 when any harness crashed, failed or printed no result (its
output tail is shown), else 0. A harness gets ``seconds`` + 120 s of wall time before it
is killed and counted as failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["HARNESSES", "main", "run_one"]

BENCH = Path(__file__).resolve().parent
HARNESSES = (
    "dcap_quote",
    "snp_report",
    "spdm",
    "pcs_json",
    "pem_chain",
    "arrays",
    "kbs_protocol",
)
_RESULT = re.compile(
    r"fuzz-result name=(?P<name>\S+) engine=(?P<engine>\S+) executions=(?P<executions>\d+) "
    r"crashes=(?P<crashes>\d+) seconds=(?P<seconds>[\d.]+)"
)


def run_one(name: str, seconds: float, extra: list[str]) -> dict[str, object]:
    """Run ``bench/fuzz_<name>.py --seconds <seconds>``; return its parsed result."""
    cmd = [sys.executable, str(BENCH / f"fuzz_{name}.py"), "--seconds", str(seconds), *extra]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
            cwd=BENCH.parent,
            check=False,
        )
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        err = exc.stderr or b""
        output = (out.decode() if isinstance(out, bytes) else out) + (
            err.decode() if isinstance(err, bytes) else err
        )
        rc = -9
    matches = list(_RESULT.finditer(output))
    match = matches[-1] if matches else None
    result: dict[str, object] = {"name": name, "returncode": rc}
    result["wall_seconds"] = round(time.monotonic() - t0, 1)
    if match is not None:
        result.update(
            engine=match["engine"],
            executions=int(match["executions"]),
            crashes=int(match["crashes"]),
            seconds=float(match["seconds"]),
        )
    ok = rc == 0 and match is not None and int(match["crashes"]) == 0
    result["ok"] = ok
    if not ok:
        result["output_tail"] = output[-6000:]
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--only", default="", help="comma-separated harness names")
    parser.add_argument("--engine", choices=("atheris", "python"), default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(HARNESSES)
    unknown = sorted(set(names) - set(HARNESSES))
    if unknown:
        parser.error(f"unknown harness(es): {', '.join(unknown)}")
    extra = ["--engine", args.engine] if args.engine else []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda n: run_one(n, args.seconds, extra), names))
    failed = [r for r in results if not r["ok"]]
    for r in results:
        status = "ok" if r["ok"] else "FAILED"
        print(
            f"{r['name']:<14} {status:<6} engine={r.get('engine', '?')} "
            f"executions={r.get('executions', 0)} seconds={r.get('seconds', r['wall_seconds'])}"
        )
    for r in failed:
        print(f"\n--- {r['name']} (exit {r['returncode']}) output tail ---\n{r['output_tail']}")
    total = sum(int(str(r.get("executions", 0))) for r in results)
    print(
        f"fuzz summary: {len(results) - len(failed)} harnesses ok, "
        f"{len(failed)} crashed or failed, {total} executions"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
