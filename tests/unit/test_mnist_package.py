"""examples/mnist: the compute package trains and validates through the package machinery."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from teeflow.fl.arrays import arrays_digest, decode_arrays, encode_arrays
from teeflow.fl.package import build_package, load_entrypoint, unpack_package

torch = pytest.importorskip("torch")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mnist"
MNIST_DIR = (
    Path(os.environ.get("TEEFLOW_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    / "data"
    / "mnist"
)


@pytest.fixture(scope="module")
def pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    archive, digest = build_package(EXAMPLE)
    dest = tmp_path_factory.mktemp("pkg") / "mnist"
    unpack_package(archive, dest, digest)
    return dest


def test_init_shapes_follow_the_data(pkg: Path) -> None:
    init = load_entrypoint(pkg, "init")
    mlp = init({"data": "digits", "model": "mlp", "seed": 1})
    assert {k: v.shape for k, v in mlp.items()} == {
        "fc1.weight": (200, 64),
        "fc1.bias": (200,),
        "fc2.weight": (200, 200),
        "fc2.bias": (200,),
        "fc3.weight": (10, 200),
        "fc3.bias": (10,),
    }
    assert all(v.dtype == np.float32 for v in mlp.values())
    assert arrays_digest(mlp) == arrays_digest(init({"data": "digits", "seed": 1}))
    assert arrays_digest(mlp) != arrays_digest(init({"data": "digits", "seed": 2}))
    cnn = init({"data": "digits", "model": "cnn"})
    assert cnn["conv1.weight"].shape == (32, 1, 5, 5)
    assert cnn["conv2.weight"].shape == (64, 32, 5, 5)
    assert cnn["fc1.weight"].shape == (512, 64 * 2 * 2)
    assert cnn["fc2.weight"].shape == (10, 512)


def test_one_mlp_round_on_digits_improves_accuracy(pkg: Path) -> None:
    init, train, validate = (load_entrypoint(pkg, n) for n in ("init", "train", "validate"))
    config = {
        "data": "digits?clients=2&index=0&seed=3",
        "model": "mlp",
        "seed": 0,
        "round": 1,
        "threads": 1,
    }
    arrays = init(config)
    n_test, before = validate(arrays, config)
    # arrays travel as safetensors, as on the wire
    sent = decode_arrays(encode_arrays(arrays))
    new, n_train, metrics = train(sent, {**config, "lr": 0.1})
    new = decode_arrays(encode_arrays(new))
    _, after = validate(new, config)
    assert n_train == 719 and n_test == 180
    assert set(metrics) == {"train_loss", "train_accuracy"} and set(after) == {"loss", "accuracy"}
    assert after["loss"] < before["loss"]
    assert after["accuracy"] > before["accuracy"] + 0.3
    # deterministic: same inputs and round give the same update
    again, _, _ = train(sent, {**config, "lr": 0.1})
    assert arrays_digest(again) == arrays_digest(new)


def test_cnn_trains_on_digits_with_default_hyperparameters(pkg: Path) -> None:
    init, train, validate = (load_entrypoint(pkg, n) for n in ("init", "train", "validate"))
    config = {"data": "digits?clients=4&index=1", "model": "cnn", "threads": 1}
    arrays = init(config)
    new, n, metrics = train(arrays, config)  # lr 0.01, batch 32, 1 epoch
    assert n > 0 and np.isfinite(metrics["train_loss"])
    assert set(new) == set(arrays) and arrays_digest(new) != arrays_digest(arrays)
    assert validate(new, config)[0] > 0


def test_wrong_arrays_are_refused(pkg: Path) -> None:
    from teeflow.errors import FLError

    train = load_entrypoint(pkg, "train")
    with pytest.raises(FLError):
        train({"fc1.weight": np.zeros((3, 3), np.float32)}, {"data": "digits"})
    with pytest.raises(FLError, match="data"):
        train({}, {})


def test_mnist_input_is_784(pkg: Path) -> None:
    if not (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"MNIST files not found in {MNIST_DIR}")
    init = load_entrypoint(pkg, "init")
    arrays = init({"data": f"mnist:{MNIST_DIR}", "model": "mlp"})
    assert arrays["fc1.weight"].shape == (200, 784)
    assert init({"data": f"mnist:{MNIST_DIR}", "model": "cnn"})["fc1.weight"].shape == (
        512,
        64 * 7 * 7,
    )
