"""Shared pieces of the federated MNIST benchmark (``bench/fl_mnist.py``).

Imported by three different processes, so it depends only on the standard library, numpy and
(for the training functions) torch — never on ``flwr`` or on teeflow beyond ``teeflow.errors``
(which ``examples/mnist/models.py`` imports; it is stdlib-only):

- the parent harness (teeflow's ``.venv``): :func:`prepare_split` computes the per-client data
  split with :mod:`teeflow.datasets` (the same ``iid_partition`` a teeflow client gets from the
  spec ``mnist:DIR?clients=N&index=i&seed=S``) and writes it to one ``npz`` file;
  :func:`run_measured` runs a child process tree and samples its memory;
- the bare loop (``bench/_fl_bare.py``, teeflow's ``.venv``) and the Flower app
  (``bench/flower_app.py``, the Flower venv): :func:`load_split`, :func:`init_arrays`,
  :func:`train_client` and :func:`evaluate_client`.

:func:`train_client` is the arithmetic of ``examples/mnist/task.py::train`` (the compute
package teeflow's clients run) on data held in memory: same model class (``models.py``, loaded
by path), same normalisation (pixels to [-1, 1]), same SGD (the hand-written step of
``task.py``, bit-identical to ``torch.optim.SGD`` without importing ``torch._dynamo``), same
per-round shuffling generator ``seed * 1_000_003 + round``. So the three runs train the same
model on the same data in the same order and their accuracies are comparable.

Memory: :class:`TreeSampler` polls ``/proc`` every ``interval`` seconds for every process of the
child's session (``start_new_session=True``) or descended from it, and records the peak of the
summed RSS (and PSS, which counts shared pages once) and each process's own peak (``VmHWM``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "BENCH",
    "DEFAULT_DATA_DIR",
    "MODELS_PY",
    "RESULT_PREFIX",
    "ROOT",
    "ClientData",
    "HParams",
    "TreeSampler",
    "emit_result",
    "evaluate_client",
    "fedavg",
    "init_arrays",
    "load_models",
    "load_split",
    "prepare_split",
    "run_measured",
    "train_client",
]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MODELS_PY = ROOT / "examples" / "mnist" / "models.py"
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "mnist"
#: Children print one line ``RESULT_PREFIX + json`` on stdout with their measurements.
RESULT_PREFIX = "FLBENCH_RESULT "

Arrays = dict[str, Any]  # name -> float32 numpy array


@dataclass(frozen=True)
class HParams:
    """The benchmark's federation: the issue's MNIST setting by default."""

    rounds: int = 30
    clients: int = 10
    lr: float = 0.01
    batch_size: int = 32
    epochs: int = 1
    seed: int = 0  # model initialisation and shuffling (task.py's config["seed"])
    split_seed: int = 0  # data partition (the spec's seed=)
    model: str = "mlp"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HParams:
        return cls(**d)


# --------------------------------------------------------------------------- data split


def prepare_split(data_dir: Path, clients: int, split_seed: int, cache_dir: Path) -> Path:
    """Write (once) ``cache_dir/mnist-c{clients}-s{seed}.npz``: the raw MNIST arrays and each
    client's train/test indices, computed by :mod:`teeflow.datasets` exactly as
    ``load_client_data("mnist:DIR?clients=N&index=i&seed=S")`` does. Needs teeflow (parent
    process only). Returns the file's path."""
    from teeflow.datasets import iid_partition, load_mnist, partition

    out = cache_dir / f"mnist-c{clients}-s{split_seed}.npz"
    if out.exists():
        return out
    full = load_mnist(os.fspath(data_dir))  # checks the published MD5s
    train_parts = partition(full.train.y, clients, scheme="iid", seed=split_seed, min_size=1)
    test_parts = iid_partition(len(full.test), clients, seed=split_seed, min_size=0)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        x_train=full.train.x,
        y_train=full.train.y,
        x_test=full.test.x,
        y_test=full.test.y,
        scale=np.float64(full.train.scale),
        train_idx=np.concatenate(train_parts),
        train_off=np.cumsum([0] + [len(p) for p in train_parts]),
        test_idx=np.concatenate(test_parts),
        test_off=np.cumsum([0] + [len(p) for p in test_parts]),
    )
    tmp.replace(out)
    return out


@dataclass
class ClientData:
    """One client's tensors: ``x`` float32 ``(n, 28, 28)`` in [-1, 1], ``y`` int64 ``(n,)``."""

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any


_SPLIT_CACHE: dict[str, Any] = {}


def _features(x: np.ndarray, scale: float) -> np.ndarray:
    # teeflow.datasets.Split.features() then task.py's normalisation, bit for bit.
    f = (x.astype(np.float32) * np.float32(scale)).astype(np.float32)
    return np.ascontiguousarray((f - np.float32(0.5)) / np.float32(0.5))


def load_split(path: Path | str, index: int) -> ClientData:
    """Client ``index``'s data from a :func:`prepare_split` file (the file is read once per
    process)."""
    import torch

    key = os.fspath(path)
    if key not in _SPLIT_CACHE:
        with np.load(key, allow_pickle=False) as npz:
            _SPLIT_CACHE[key] = {k: npz[k] for k in npz.files}
    d = _SPLIT_CACHE[key]
    scale = float(d["scale"])
    tr = np.sort(d["train_idx"][d["train_off"][index] : d["train_off"][index + 1]])
    te = np.sort(d["test_idx"][d["test_off"][index] : d["test_off"][index + 1]])
    return ClientData(
        torch.from_numpy(_features(d["x_train"][tr], scale)),
        torch.from_numpy(d["y_train"][tr].astype(np.int64)),
        torch.from_numpy(_features(d["x_test"][te], scale)),
        torch.from_numpy(d["y_test"][te].astype(np.int64)),
    )


# --------------------------------------------------------------------------- model, training

_MODELS_NAME = "_flbench_mnist_models"


def load_models() -> ModuleType:
    """``examples/mnist/models.py`` imported by path (needs ``teeflow.errors`` importable)."""
    mod = sys.modules.get(_MODELS_NAME)
    if mod is None:
        if os.fspath(ROOT / "src") not in sys.path:
            sys.path.append(os.fspath(ROOT / "src"))  # for teeflow.errors (stdlib-only)
        spec = importlib.util.spec_from_file_location(_MODELS_NAME, MODELS_PY)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[_MODELS_NAME] = mod
        spec.loader.exec_module(mod)
    return mod


def build(hp: HParams) -> Any:
    """A fresh model of ``hp.model`` for 28x28 inputs."""
    return load_models().build_model(hp.model, (28, 28), 10)


def init_arrays(hp: HParams) -> Arrays:
    """The initial global model, as ``task.py::init_arrays`` makes it (seeded, fork_rng)."""
    import torch

    models = load_models()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(hp.seed)
        return models.to_arrays(build(hp))  # type: ignore[no-any-return]


def train_client(
    model: Any, arrays: Arrays, data: ClientData, server_round: int, hp: HParams
) -> tuple[Arrays, int, dict[str, float]]:
    """``hp.epochs`` epochs of SGD from ``arrays`` — ``task.py::train``'s loop verbatim."""
    import torch
    from torch import nn

    models = load_models()
    models.load_arrays(model, arrays)
    x, y = data.x_train, data.y_train
    n = int(y.shape[0])
    params = list(model.parameters())
    for p in params:
        p.grad = None
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(hp.seed * 1_000_003 + server_round)
    total_loss, correct, seen = 0.0, 0, 0
    model.train()
    for _ in range(hp.epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, hp.batch_size):
            idx = perm[start : start + hp.batch_size]
            out = model(x[idx])
            loss = loss_fn(out, y[idx])
            loss.backward()
            with torch.no_grad():  # task.py::sgd_step, momentum 0: torch.optim.SGD's arithmetic
                for p in params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-hp.lr)
                        p.grad = None
            total_loss += loss.item() * len(idx)
            correct += int((out.argmax(1) == y[idx]).sum())
            seen += len(idx)
    metrics = {"train_loss": total_loss / seen, "train_accuracy": correct / seen}
    return models.to_arrays(model), n, metrics


def evaluate_client(model: Any, arrays: Arrays, data: ClientData) -> tuple[int, float, float]:
    """``(n, mean loss, accuracy)`` on the client's test part — ``task.py::validate``."""
    import torch
    from torch import nn

    load_models().load_arrays(model, arrays)
    model.eval()
    x, y = data.x_test, data.y_test
    n = int(y.shape[0])
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, n, 1024):
            out = model(x[start : start + 1024])
            loss_sum += float(
                nn.functional.cross_entropy(out, y[start : start + 1024], reduction="sum")
            )
            correct += int((out.argmax(1) == y[start : start + 1024]).sum())
    return n, loss_sum / max(n, 1), correct / max(n, 1)


def fedavg(updates: list[tuple[Arrays, int]]) -> Arrays:
    """FedAvg in plain numpy: ``sum n_k w_k / sum n_k`` in float64, returned as float32."""
    total = float(sum(n for _, n in updates))
    out: Arrays = {}
    for name in updates[0][0]:
        acc = np.zeros(updates[0][0][name].shape, dtype=np.float64)
        for arrays, n in updates:
            acc += np.asarray(arrays[name], dtype=np.float64) * float(n)
        out[name] = (acc / total).astype(np.float32)
    return out


def emit_result(payload: dict[str, Any]) -> None:
    """Print the child's result line (parsed by :func:`run_measured`)."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def self_peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``) in MiB."""
    return _status_kb(os.getpid()).get("VmHWM", 0) / 1024.0


# --------------------------------------------------------------------------- memory sampling


def _status_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, session id)`` of ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        fields = text[text.rindex(")") + 2 :].split()
        return int(fields[1]), int(fields[3])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:300]
    except OSError:
        return ""


def tree_pids(root: int) -> list[int]:
    """``root``, its descendants, and every process of ``root``'s session."""
    table: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                table[int(name)] = st
    sid = root  # the child was started with start_new_session=True (so its sid is its pid)
    members = {pid for pid, (_, psid) in table.items() if pid == root or psid == sid}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, psid) in table.items():
            if pid not in members and (ppid in members or psid == sid):
                members.add(pid)
                changed = True
    return sorted(members)


@dataclass
class TreeSampler:
    """Polls the memory of the process tree rooted at ``root`` until :meth:`stop`."""

    root: int
    interval: float = 0.1
    pss_every: int = 5  # PSS (smaps_rollup) is dearer: every n-th sample
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0
    peak_procs: int = 0
    samples: int = 0
    per_process: dict[int, dict[str, Any]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        pids = tree_pids(self.root)
        rss = pss = 0
        with_pss = self.samples % self.pss_every == 0
        for pid in pids:
            st = _status_kb(pid)
            if not st:
                continue
            rss += st.get("VmRSS", 0)
            if with_pss:
                pss += _pss_kb(pid)
            rec = self.per_process.get(pid)
            if rec is None:
                rec = self.per_process[pid] = {"cmdline": _cmdline(pid), "peak_kb": 0}
            rec["peak_kb"] = max(rec["peak_kb"], st.get("VmHWM", 0), st.get("VmRSS", 0))
        self.samples += 1
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.peak_procs = max(self.peak_procs, len(pids))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        top = sorted(self.per_process.items(), key=lambda kv: -kv[1]["peak_kb"])[:8]
        return {
            "peak_tree_rss_mb": round(self.peak_rss_kb / 1024, 1),
            "peak_tree_pss_mb": round(self.peak_pss_kb / 1024, 1),
            "peak_processes": self.peak_procs,
            "processes_seen": len(self.per_process),
            "samples": self.samples,
            "sample_interval_s": self.interval,
            "peak_rss_mb_by_pid": {
                str(pid): round(r["peak_kb"] / 1024, 1) for pid, r in self.per_process.items()
            },
            "largest_processes": [
                {"pid": pid, "peak_rss_mb": round(r["peak_kb"] / 1024, 1), "cmd": r["cmdline"]}
                for pid, r in top
            ],
        }


def _kill_session(sid: int) -> None:
    """SIGKILL whatever is left of the session we created (our own child's processes)."""
    import signal

    for pid in tree_pids(sid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def run_measured(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 3600.0,
    log: Path | None = None,
    interval: float = 0.1,
) -> dict[str, Any]:
    """Run ``cmd`` in a new session, sample its tree's memory, time it end to end.

    Returns ``{"returncode", "wall_seconds", "result" (the child's RESULT line as a dict, or
    None), "memory" (TreeSampler.summary()), "tail" (last lines of output)}``.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
        errors="replace",
    )
    sampler = TreeSampler(proc.pid, interval=interval)
    sampler.start()
    lines: list[str] = []
    result: dict[str, Any] | None = None
    killer = threading.Timer(timeout, lambda: _kill_session(proc.pid))
    killer.start()
    try:
        assert proc.stdout is not None
        logf = log.open("w") if log else None
        for line in proc.stdout:
            if logf:
                logf.write(line)
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX) :])
            else:
                lines.append(line.rstrip("\n"))
                del lines[:-40]
        proc.wait()
        if logf:
            logf.close()
    finally:
        wall = time.perf_counter() - t0
        killer.cancel()
        sampler.stop()
        _kill_session(proc.pid)  # leftovers (e.g. ray daemons) of our own child
    return {
        "returncode": proc.returncode,
        "wall_seconds": round(wall, 3),
        "result": result,
        "memory": sampler.summary(),
        "tail": lines[-15:],
    }
