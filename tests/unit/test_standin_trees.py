"""The stand-in state machines without FUSE: the kernel's configfs-tsm generation rules,
the SNP certificate table, Gramine's pseudo-files and the marker the attesters read."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest

from teeflow.errors import PlatformError
from teeflow.platform.gramine import GramineAttester
from teeflow.platform.standin import STANDIN_MARKER, declared_tee, is_standin
from teeflow.platform.tsm import TsmAttester
from teeflow.testing.evidence import emulated_authority
from teeflow.testing.gramine_standin import (
    KEY_POLICY_MRENCLAVE,
    KEY_POLICY_MRSIGNER,
    GramineTree,
    seal_key,
    target_info,
)
from teeflow.testing.pseudofs import MarkedTree
from teeflow.testing.tsm_standin import (
    Entry,
    TsmTree,
    standin_measurement,
)

M = hashlib.sha256(b"workload").digest()


def _tree(tee: str = "tdx") -> tuple[TsmTree, list[tuple[bytes, int]]]:
    calls: list[tuple[bytes, int]] = []

    def report(rd: bytes, level: int) -> tuple[bytes, bytes | None]:
        calls.append((rd, level))
        return b"report:" + rd + bytes([level]), (b"aux" if tee == "sev-snp" else None)

    return TsmTree(tee, report), calls


def _errno(fn: object, *args: object) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.errno is not None
    return info.value.errno


def test_generation_counts_committed_writes_and_caches_reports() -> None:
    tree, calls = _tree()
    tree.mkdir(("e",))
    assert tree.read(("e", "generation")) == b"0\n"
    assert _errno(tree.read, ("e", "outblob")) == errno.EINVAL  # no inblob yet
    tree.write(("e", "inblob"), b"a" * 64)
    assert tree.read(("e", "generation")) == b"1\n"
    first = tree.read(("e", "outblob"))
    assert tree.read(("e", "outblob")) == first and len(calls) == 1  # cached
    tree.write(("e", "inblob"), b"b" * 64)
    assert tree.read(("e", "outblob")) == b"report:" + b"b" * 64 + b"\x00"
    assert len(calls) == 2 and tree.read(("e", "generation")) == b"2\n"


def test_generation_refuses_to_wrap_onto_an_unread_configuration() -> None:
    tree, _ = _tree()
    tree.mkdir(("e",))
    tree.entries["e"] = Entry(write_generation=2**64 - 1, read_generation=0)
    assert _errno(tree.write, ("e", "inblob"), bytes(64)) == errno.EBUSY


def test_provider_requires_64_bytes_and_tdx_has_no_snp_attributes() -> None:
    tree, _ = _tree()
    tree.mkdir(("e",))
    tree.write(("e", "inblob"), bytes(10))
    assert _errno(tree.read, ("e", "outblob")) == errno.EINVAL
    assert tree.node(("e", "auxblob")) is None and tree.node(("e", "privlevel")) is None
    assert tree.read(("e", "provider")) == b"tdx_guest\n"


def test_snp_privlevel_range_and_floor() -> None:
    calls: list[tuple[bytes, int]] = []
    tree = TsmTree(
        "sev-snp", lambda rd, lv: (calls.append((rd, lv)) or b"r", b"t"), privlevel_floor=1
    )
    tree.mkdir(("e",))
    assert _errno(tree.write, ("e", "privlevel"), b"0\n") == errno.EINVAL  # below the floor
    assert _errno(tree.write, ("e", "privlevel"), b"x") == errno.EINVAL
    tree.write(("e", "privlevel"), b"3\n")
    tree.write(("e", "inblob"), bytes(64))
    assert tree.read(("e", "auxblob")) == b"t" and calls == [(bytes(64), 3)]
    assert tree.read(("e", "generation")) == b"2\n"


def test_entries_do_not_nest_and_vanish_on_rmdir() -> None:
    tree, _ = _tree()
    tree.mkdir(("e",))
    assert _errno(tree.mkdir, ("e",)) == errno.EEXIST
    assert _errno(tree.mkdir, ("e", "f")) == errno.EPERM
    tree.rmdir(("e",))
    assert _errno(tree.read, ("e", "generation")) == errno.ENOENT
    assert _errno(tree.rmdir, ("e",)) == errno.ENOENT
    with pytest.raises(PlatformError):
        TsmTree("sgx", lambda rd, lv: (b"", None))


def test_standin_measurement_matches_emulated_identity() -> None:
    assert standin_measurement("tdx", M) == M + bytes(16)
    assert standin_measurement("sev-snp", M) == M + bytes(16)
    with pytest.raises(PlatformError):
        standin_measurement("tdx", M[:31])


def test_gramine_tree_files_and_keys() -> None:
    authority = emulated_authority()
    tree = GramineTree(authority, M)
    assert tree.read(("attestation_type",)) == b"dcap"
    assert tree.read(("user_report_data",)) == bytes(64)
    assert _errno(tree.write, ("user_report_data",), bytes(65)) == errno.EINVAL
    assert _errno(tree.write, ("quote",), b"x") == errno.EACCES
    tree.write(("user_report_data",), b"r" * 64)
    assert tree.read(("quote",))[48 + 320 : 48 + 384] == b"r" * 64  # REPORTDATA of the body
    assert tree.read(("my_target_info",)) == target_info(M)
    key = tree.read(("keys", "_sgx_mrenclave"))
    assert len(key) == 16
    other = seal_key(
        authority,
        policy=KEY_POLICY_MRENCLAVE,
        mrenclave=hashlib.sha256(b"other").digest(),
        mrsigner=authority.mrsigner,
    )
    assert key != other
    signer = seal_key(
        authority,
        policy=KEY_POLICY_MRSIGNER,
        mrenclave=hashlib.sha256(b"other").digest(),
        mrsigner=authority.mrsigner,
    )
    assert signer == tree.read(("keys", "_sgx_mrsigner"))  # MRSIGNER policy ignores MRENCLAVE
    with pytest.raises(PlatformError):
        seal_key(authority, policy=3, mrenclave=M, mrsigner=M)


def test_marker_declares_emulated_evidence(tmp_path: Path) -> None:
    assert declared_tee(tmp_path, "tdx") == "tdx" and not is_standin(tmp_path)
    assert GramineAttester(tmp_path).tee == "sgx"
    (tmp_path / STANDIN_MARKER).write_text("{}")
    assert declared_tee(tmp_path, "snp") == "emulated-snp"
    assert GramineAttester(tmp_path).tee == "emulated-sgx"
    assert TsmAttester(tmp_path, expected_provider="tdx_guest").tee == "emulated-tdx"


def test_marked_tree_serves_the_marker_and_protects_it() -> None:
    tree, _ = _tree()
    marked = MarkedTree(tree, {"tee": "emulated-tdx"})
    assert STANDIN_MARKER in marked.listdir(())
    assert b'"emulated": true' in marked.read((STANDIN_MARKER,))
    assert _errno(marked.mkdir, (STANDIN_MARKER,)) == errno.EEXIST
    assert _errno(marked.rmdir, (STANDIN_MARKER,)) == errno.ENOTDIR
