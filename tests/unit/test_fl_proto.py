"""The committed generated gRPC code is exactly what grpcio-tools makes from the .proto."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import teeflow.fl.proto as proto_pkg
from teeflow.fl.proto import PROTO_FILE
from teeflow.fl.proto import teeflow_fl_pb2 as pb

GENERATED = ("teeflow_fl_pb2.py", "teeflow_fl_pb2.pyi", "teeflow_fl_pb2_grpc.py")


def test_regenerating_gives_identical_files(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    here = Path(proto_pkg.__file__).parent
    target = tmp_path / Path(PROTO_FILE).parent
    target.mkdir(parents=True)
    shutil.copy(here / "teeflow_fl.proto", target / "teeflow_fl.proto")
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{tmp_path}",
            f"-I{include}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            PROTO_FILE,
        ]
    )
    assert code == 0
    for name in GENERATED:
        assert (target / name).read_bytes() == (here / name).read_bytes(), name


def test_messages_round_trip() -> None:
    msg = pb.ClientMessage(
        result=pb.Result(
            task_id=3,
            num_examples=9,
            metrics={"loss": 0.5},
            arrays_size=4,
            arrays_sha256=b"\x01" * 32,
        )
    )
    back = pb.ClientMessage.FromString(msg.SerializeToString())
    assert back.WhichOneof("body") == "result" and back.result.metrics["loss"] == 0.5
