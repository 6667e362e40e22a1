"""Install footprint: ``pip install teeflow`` (no extras) against ``pip install flwr``.

Each target is installed into its own fresh virtual environment, one after the other in the
same run, with ``--no-cache-dir`` (so neither profits from the other's downloads); with
``--repeat N`` the pair is installed N times in alternating order (ABBA...), so load from
other processes on the machine hits both alike. Reported per target: wall seconds of each
``pip install`` (and their minimum and median), the CPU seconds of pip and its children
(user + system: less sensitive to other load than wall time) and the megabytes it added to
the venv (the whole venv folder minus the size of the empty venv). teeflow is installed from
a wheel built beforehand from this checkout (the build is not timed: users install a wheel).

Run from the repository root::

    python bench/install_footprint.py [--flwr-spec flwr] [--extra ''] [--repeat N] [--out FILE]

Results go to ``bench/results/install_footprint.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json

ROOT = Path(__file__).resolve().parent.parent


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def _fresh_venv(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    return where / "bin" / "python"


def _install(tmp: Path, label: str, spec: str) -> dict[str, Any]:
    venv = tmp / f"venv-{label}"
    py = _fresh_venv(venv)
    empty = _du(venv)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-cache-dir", "--quiet", spec],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        return {"spec": spec, "ok": False, "stderr": proc.stderr[-2000:]}
    freeze = subprocess.run(
        [str(py), "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout.split()
    added = _du(venv) - empty
    return {
        "spec": spec,
        "ok": True,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "megabytes": round(added / 1e6, 1),
        "distributions": len(freeze),
        "warnings": [ln for ln in proc.stderr.splitlines() if "warn" in ln.lower()][:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flwr-spec", default="flwr", help="pip requirement for Flower")
    parser.add_argument("--extra", default="", help="teeflow extra to add, e.g. 'demo'")
    parser.add_argument("--repeat", type=int, default=1, help="install each target N times")
    parser.add_argument("--out", type=Path, default=None, help="JSON output file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="footprint-") as d:
        tmp = Path(d)
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
             str(tmp / "dist"), str(ROOT)],
            capture_output=True, text=True, check=False,
        )
        if build.returncode != 0:
            raise SystemExit(f"wheel build failed:\n{build.stderr[-2000:]}")
        wheel = next((tmp / "dist").glob("teeflow-*.whl"))
        spec = f"{wheel}[{args.extra}]" if args.extra else str(wheel)
        runs: dict[str, list[dict[str, Any]]] = {"teeflow": [], "flwr": []}
        for i in range(args.repeat):
            order = ["teeflow", "flwr"] if i % 2 == 0 else ["flwr", "teeflow"]
            for label in order:
                target = spec if label == "teeflow" else args.flwr_spec
                runs[label].append(_install(tmp, f"{label}-{i}", target))
        results: dict[str, Any] = {"machine": machine(), "repeat": args.repeat}
        for label, items in runs.items():
            ok = [r for r in items if r.get("ok")]
            seconds = sorted(r["seconds"] for r in ok)
            results[label] = {
                **(ok[0] if ok else items[0]),
                "seconds_all": seconds,
                "seconds_min": seconds[0] if seconds else None,
                "seconds_median": statistics.median(seconds) if seconds else None,
                "cpu_seconds_all": sorted(r["cpu_seconds"] for r in ok),
            }
        results["build_warnings"] = [
            ln for ln in build.stderr.splitlines() if "deprecat" in ln.lower()
        ][:10]
    path = write_json("install_footprint", results, args.out)
    print(path.read_text())


if __name__ == "__main__":
    main()
