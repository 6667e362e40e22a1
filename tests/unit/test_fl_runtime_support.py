"""Support pieces of the FL workloads: the shared data cache (round trip, tamper → refused and
rebuilt, same shares as teeflow.datasets), peak RSS from VmHWM, and the lean entry points'
options (the same as the typer CLI's)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from teeflow.datasets import DatasetError
from teeflow.datasets import load_client_data as reference
from teeflow.fl import datacache
from teeflow.fl.entry import aggregator_parser, client_parser
from teeflow.fl.memory import peak_rss_bytes

MNIST_DIR = (
    Path(os.environ.get("TEEFLOW_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    / "data"
    / "mnist"
)


def _forget() -> None:
    datacache._MEMO.clear()
    datacache._SHARES.clear()


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 255, (50, 4, 4), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 50).astype(np.int64),
    }


def test_cache_entry_round_trip_is_read_only_and_verified(tmp_path: Path) -> None:
    folder = tmp_path / "c" / "entry"
    arrays = _arrays()
    datacache.write_entry(folder, arrays, {"sources": {"a": "1"}})
    got = datacache.read_entry(folder, {"sources": {"a": "1"}})
    assert set(got) == set(arrays)
    for k, v in arrays.items():
        assert np.array_equal(got[k], v) and got[k].dtype == v.dtype
        assert not got[k].flags.writeable
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["entry"]  # no temporary left
    with pytest.raises(DatasetError, match="'sources' differs"):
        datacache.read_entry(folder, {"sources": {"a": "2"}})


def test_tampered_cache_entry_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "entry"
    datacache.write_entry(folder, _arrays(), {})
    path = folder / "x_train.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="x_train does not match"):
        datacache.read_entry(folder, {})
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format"] = "other"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="not a teeflow-array-cache/1 entry"):
        datacache.read_entry(folder, {})
    with pytest.raises(DatasetError, match="no readable manifest"):
        datacache.read_entry(tmp_path / "missing", {})


def test_cache_location_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEEFLOW_HOME", "/h")
    monkeypatch.delenv("TEEFLOW_DATA_CACHE", raising=False)
    assert datacache.cache_dir() == Path("/h/cache/datasets")
    monkeypatch.setenv("TEEFLOW_DATA_CACHE", "/elsewhere")
    assert datacache.cache_dir() == Path("/elsewhere")
    monkeypatch.setenv("TEEFLOW_DATA_CACHE", "off")
    assert datacache.cache_dir() is None


def test_non_mnist_data_is_loaded_as_before(tmp_path: Path) -> None:
    spec = "digits?clients=3&index=1&seed=7"
    a, b = datacache.load_client_data(spec, cache=tmp_path), reference(spec)
    assert np.array_equal(a.train.x, b.train.x) and np.array_equal(a.test.y, b.test.y)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST files not at {MNIST_DIR}")
def test_mnist_through_the_cache_gives_the_same_shares(tmp_path: Path) -> None:
    spec = f"mnist:{MNIST_DIR}?clients=10&index=3&seed=0"
    _forget()
    first = datacache.load_client_data(spec, cache=tmp_path)
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    _forget()
    second = datacache.load_client_data(spec, cache=tmp_path)  # from the entry
    ref = reference(spec)
    for ds in (first, second):
        for split in ("train", "test"):
            got, want = getattr(ds, split), getattr(ref, split)
            assert np.array_equal(got.x, want.x) and np.array_equal(got.y, want.y)
            assert got.y.dtype == want.y.dtype and got.scale == want.scale
    # a corrupted entry is refused, rebuilt from the checked source, and still gives the data
    raw = bytearray((entry / "y_test.npy").read_bytes())
    raw[-1] = (raw[-1] + 1) % 10
    (entry / "y_test.npy").write_bytes(bytes(raw))
    _forget()
    third = datacache.load_client_data(spec, cache=tmp_path)
    assert np.array_equal(third.test.y, ref.test.y)
    datacache.read_entry(entry, {})  # rebuilt: verifies again
    _forget()


def test_peak_rss_reads_vmhwm(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  999 kB\nVmHWM:\t   1234 kB\nVmRSS:\t 1000 kB\n")
    assert peak_rss_bytes(str(status)) == 1234 * 1024
    status.write_text("Name:\tpython\nVmHWM:\tgarbage\n")
    assert peak_rss_bytes(str(status)) > 0  # falls back to ru_maxrss
    assert peak_rss_bytes(str(tmp_path / "none")) > 0
    assert peak_rss_bytes() > 1 << 20


def test_lean_entry_points_take_the_cli_options() -> None:
    """The options LocalFederation passes parse the same way as with ``teeflow ... run``."""
    args = (
        "--enrollment e.jwt --pin p --session s --rounds 3 --min-clients 2 --wait-clients 3 "
        "--listen 127.0.0.1:0 --package x.sealed --train-config {} --round-timeout 9 --state-dir d"
    )
    a = aggregator_parser().parse_args(args.split())
    assert (a.rounds, a.min_clients, a.wait_clients, a.round_timeout) == (3, 2, 3, 9.0)
    assert (a.connect_timeout, a.strategy, a.fraction_fit) == (120.0, None, None)  # agreement
    c = client_parser().parse_args(
        ["run", "--enrollment", "e.jwt", "--party", "x", "--pin", "p", "--aggregator", "h:1",
         "--data", "digits"]
    )
    assert (c.threads, c.connect_timeout, c.package_file) == (1, 60.0, None)
    assert str(c.enrollment) == "e.jwt" and str(a.enrollment) == "e.jwt"
    with pytest.raises(SystemExit):  # every role needs its party's enrollment
        client_parser().parse_args(["--party", "x", "--pin", "p", "--aggregator", "h:1",
                                    "--data", "digits"])
    import typer

    from teeflow.cli import fl_cmds  # the typer CLI has the same option names

    app = typer.Typer()
    fl_cmds.register(app)
    from typer.main import get_command

    group = get_command(app)
    for name, parser in (("aggregator", aggregator_parser()), ("client", client_parser())):
        run = group.commands[name].commands["run"]  # type: ignore[attr-defined]
        cli = {opt for p in run.params for opt in p.opts}
        lean = {s for act in parser._actions for s in act.option_strings} - {"-h", "--help"}
        assert cli == lean, name
