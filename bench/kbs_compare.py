"""KBS load, this tree against a baseline checkout, interleaved in one run.

Runs ``bench/kbs_load.py`` alternately from a baseline checkout (``--baseline DIR``, e.g.
``git worktree add --detach /tmp/kbs-base <commit>``) and from this tree, ``--reps`` times
each (baseline, current, baseline, current, ...), so both see the same machine and load.
Each run uses its own tree's ``src`` (``PYTHONPATH``) and this tree's virtual environment.

Reported per side: the median over the runs of flows/s, cached fetches/s, their p99 (ms)
and the **server CPU time per operation** (ms; the KBS process's user+system CPU over the
phase divided by the operations served). On a machine shared with other work the rates
move with the load; CPU per operation moves much less and bounds the capacity
(``cores / cpu_ms_per_op * 1000`` operations per second).

Usage::

    .venv/bin/python bench/kbs_compare.py --baseline /tmp/kbs-base [--reps 3] \
        [--duration 15] [--out FILE]

Writes ``bench/results/kbs_compare.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json

HERE = Path(__file__).resolve().parent.parent
FIELDS = ("per_second", "p99_ms", "server_cpu_ms_per_op", "client_cpu_ms_per_op")


def _run(tree: Path, duration: float, out: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    cmd = [sys.executable, str(tree / "bench" / "kbs_load.py"), "--duration", str(duration),
           "--out", str(out)]
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"kbs_load.py in {tree} failed:\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _median(runs: list[dict[str, Any]], phase: str) -> dict[str, float]:
    return {
        f: round(statistics.median(float(r[phase][f]) for r in runs), 3)
        for f in FIELDS
        if all(r[phase].get(f) is not None for r in runs)
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, required=True,
                    help="checkout of the baseline commit (has src/ and bench/kbs_load.py)")
    ap.add_argument("--reps", type=int, default=3, help="runs per side (default 3)")
    ap.add_argument("--duration", type=float, default=15.0,
                    help="seconds per phase and run (default 15)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON result file (default bench/results/kbs_compare.json)")
    args = ap.parse_args()
    base = args.baseline.resolve()
    if not (base / "bench" / "kbs_load.py").is_file():
        raise SystemExit(f"{base} has no bench/kbs_load.py: pass a checkout of the baseline")
    commit = subprocess.run(["git", "-C", str(base), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip() or None
    sides: dict[str, list[dict[str, Any]]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.reps):
            for side, tree in (("baseline", base), ("current", HERE)):
                r = _run(tree, args.duration, Path(tmp) / f"{side}-{i}.json")
                sides[side].append(r)
                print(f"{side} run {i + 1}: flows/s {r['flows']['per_second']:.1f} "
                      f"(server {r['flows'].get('server_cpu_ms_per_op', 0):.2f} ms/flow), "
                      f"fetches/s {r['cached_fetches']['per_second']:.1f} "
                      f"(server {r['cached_fetches'].get('server_cpu_ms_per_op', 0):.2f} ms)",
                      flush=True)
    summary = {
        side: {phase: _median(runs, phase) for phase in ("flows", "cached_fetches")}
        for side, runs in sides.items()
    }
    ratio = {
        phase: {
            f: round(summary["current"][phase][f] / summary["baseline"][phase][f], 3)
            for f in summary["current"][phase]
            if summary["baseline"][phase].get(f)
        }
        for phase in ("flows", "cached_fetches")
    }
    result = {
        "benchmark": "kbs_compare",
        "machine": machine(),
        "config": {"reps": args.reps, "duration_s": args.duration, "baseline": str(base),
                   "baseline_commit": commit},
        "median": summary,
        "current_over_baseline": ratio,
        "loadavg": os.getloadavg(),
        "runs": {side: [{p: r[p] for p in ("flows", "cached_fetches")} for r in runs]
                 for side, runs in sides.items()},
    }
    write_json("kbs_compare", result, args.out)
    print(json.dumps({"median": summary, "current_over_baseline": ratio}, indent=2))


if __name__ == "__main__":
    main()
