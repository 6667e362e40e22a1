"""Decrypted outputs are written readable by their owner only (mode 0600): ``compute open``
(every value kind) and ``model open`` (tests/unit/test_fl_outputs.py). Before, they were
written with the default umask (0644: world-readable plaintext)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from teeflow.cli.compute_cmds import read_value_file, write_value_file


def _values() -> dict[str, Any]:
    values: dict[str, Any] = {
        "a.npy": np.arange(6, dtype=np.float64).reshape(2, 3),
        "b.npz": {"x": np.ones(3, np.float32), "y": np.zeros((2, 2), np.int64)},
        "c.bin": b"\x00secret bytes",
        "d.json": {"mean": 4.5, "n": 10},
    }
    try:
        import pyarrow as pa

        values["e.arrow"] = pa.table({"v": [1, 2, 3]})
    except ImportError:
        pass
    return values


@pytest.mark.parametrize("name", sorted(_values()))
def test_compute_open_writes_0600_even_over_a_world_readable_file(
    tmp_path: Path, name: str
) -> None:
    value = _values()[name]
    path = tmp_path / name
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    old_umask = os.umask(0o022)
    try:
        write_value_file(path, value)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    if name.endswith(".npy"):
        np.testing.assert_array_equal(np.load(path, allow_pickle=False), value)
    elif name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            assert set(z.files) == {"x", "y"}
    elif name.endswith(".json"):
        assert json.loads(path.read_text()) == value
    elif name.endswith(".bin"):
        assert path.read_bytes() == value
    else:
        assert read_value_file(path).equals(value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
