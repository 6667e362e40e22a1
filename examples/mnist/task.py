"""Entrypoints of the MNIST compute package (see README.md for the config keys).

``train(arrays, config) -> (arrays, num_examples, metrics)`` and
``validate(arrays, config) -> (num_examples, metrics)``, as ``teeflow.yaml`` declares, plus the
function ``init(config) -> arrays`` that makes the initial global model (the aggregator has no
torch). Data arrives as ``config["data"]``, a :mod:`teeflow.datasets.spec` string such as
``"digits?clients=3&index=0&seed=7"`` or ``"mnist:/data/mnist?clients=10&index=4"``; MNIST is
read through the machine's shared, verified cache of decoded arrays
(:mod:`teeflow.fl.datacache`), so ten clients do not decompress the same files ten times.

The optimiser is plain minibatch SGD written out (:func:`sgd_step`): the same arithmetic as
``torch.optim.SGD(lr, momentum)`` (no dampening, weight decay or Nesterov) — a unit test checks
the parameters are bit-identical — without constructing ``torch.optim``, whose first use
imports ``torch._dynamo`` (seconds of CPU per client process).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from teeflow.datasets import Dataset, Split
from teeflow.errors import FLError
from teeflow.fl.datacache import load_client_data

from .models import build_model, load_arrays, to_arrays

__all__ = ["init_arrays", "predict", "predict_metadata", "sgd_step", "train", "validate"]

Arrays = dict[str, NDArray[np.float32]]

#: Defaults of the config keys (README.md).
DEFAULTS: dict[str, Any] = {
    "model": "mlp",
    "lr": 0.01,
    "momentum": 0.0,
    "batch_size": 32,
    "epochs": 1,
    "seed": 0,
    "round": 0,
    "normalize": True,
    "threads": 0,
}


def _cfg(config: dict[str, Any], key: str) -> Any:
    return config.get(key, DEFAULTS[key])


def _data(config: dict[str, Any]) -> Dataset:
    spec = config.get("data")
    if not isinstance(spec, str):
        raise FLError('config["data"] must be a data spec string (e.g. "digits")')
    return load_client_data(spec)


_TENSORS: dict[tuple[int, bool], tuple[Split, torch.Tensor, torch.Tensor]] = {}


def _tensors(split: Split, config: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The split as float32 features (normalised if asked) and int64 labels; memoised per
    split (a client's share is the same object every round), never modified by the callers."""
    normalize = bool(_cfg(config, "normalize"))
    hit = _TENSORS.get((id(split), normalize))
    if hit is not None and hit[0] is split:
        return hit[1], hit[2]
    x = split.features()
    if normalize:
        x = (x - np.float32(0.5)) / np.float32(0.5)  # [0, 1] -> [-1, 1]
    tx = torch.from_numpy(np.ascontiguousarray(x))
    ty = torch.from_numpy(np.array(split.y, dtype=np.int64))
    if len(_TENSORS) >= 4:
        _TENSORS.clear()
    _TENSORS[(id(split), normalize)] = (split, tx, ty)
    return tx, ty


def _setup(config: dict[str, Any]) -> None:
    threads = int(_cfg(config, "threads"))
    if threads > 0:
        torch.set_num_threads(threads)


def _model(arrays: Arrays | None, config: dict[str, Any], data: Dataset) -> nn.Module:
    model = build_model(str(_cfg(config, "model")), data.train.feature_shape, data.num_classes)
    if arrays is not None:
        load_arrays(model, dict(arrays))
    return model


@torch.no_grad()
def sgd_step(
    params: list[torch.Tensor],
    lr: float,
    momentum: float = 0.0,
    buffers: list[torch.Tensor | None] | None = None,
) -> None:
    """One SGD step in place, as ``torch.optim.SGD(params, lr, momentum).step()`` computes it
    on CPU (``param -= lr * g`` with ``g`` the gradient, or with momentum the buffer
    ``b = momentum * b + grad``, ``b = grad`` on the first step); then the gradients are reset
    to None (``zero_grad()``). ``buffers``: the momentum buffers, one per parameter (updated in
    place); parameters without a gradient are skipped."""
    for i, p in enumerate(params):
        g = p.grad
        if g is None:
            continue
        if momentum != 0.0:
            assert buffers is not None
            buf = buffers[i]
            if buf is None:
                buf = buffers[i] = torch.clone(g).detach()
            else:
                buf.mul_(momentum).add_(g)
            g = buf
        p.add_(g, alpha=-lr)
        p.grad = None


def init_arrays(config: dict[str, Any]) -> Arrays:
    """Initial global model for ``config["model"]`` and the data's input shape (seeded by
    ``config["seed"]``; PyTorch's default initialisation)."""
    data = _data(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(_cfg(config, "seed")))
        return to_arrays(_model(None, config, data))


def train(arrays: Arrays, config: dict[str, Any]) -> tuple[Arrays, int, dict[str, float]]:
    """``epochs`` epochs of minibatch SGD (``lr``, ``momentum``, ``batch_size``) on this
    client's train split, shuffled by ``(seed, round)``.

    Returns:
        ``(new arrays, number of training examples, {"train_loss", "train_accuracy"})``
        (mean loss and accuracy over the epoch's batches).
    """
    _setup(config)
    data = _data(config)
    model = _model(arrays, config, data)
    x, y = _tensors(data.train, config)
    n = int(y.shape[0])
    if n == 0:
        raise FLError("no training data")
    params = list(model.parameters())
    lr, momentum = float(_cfg(config, "lr")), float(_cfg(config, "momentum"))
    buffers: list[torch.Tensor | None] = [None] * len(params)
    for p in params:
        p.grad = None
    loss_fn = nn.CrossEntropyLoss()
    batch = int(_cfg(config, "batch_size"))
    gen = torch.Generator().manual_seed(
        int(_cfg(config, "seed")) * 1_000_003 + int(_cfg(config, "round"))
    )
    total_loss, correct, seen = 0.0, 0, 0
    model.train()
    for _ in range(int(_cfg(config, "epochs"))):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            out = model(x[idx])
            loss = loss_fn(out, y[idx])
            loss.backward()
            sgd_step(params, lr, momentum, buffers)
            total_loss += loss.item() * len(idx)
            correct += int((out.argmax(1) == y[idx]).sum())
            seen += len(idx)
    metrics = {"train_loss": total_loss / seen, "train_accuracy": correct / seen}
    return to_arrays(model), n, metrics


@torch.no_grad()
def validate(arrays: Arrays, config: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """Loss and accuracy of ``arrays`` on this client's test split.

    Returns:
        ``(number of test examples, {"loss", "accuracy"})``.
    """
    _setup(config)
    data = _data(config)
    model = _model(arrays, config, data)
    model.eval()
    x, y = _tensors(data.test, config)
    n = int(y.shape[0])
    if n == 0:
        return 0, {"loss": 0.0, "accuracy": 0.0}
    loss_sum, correct = 0.0, 0
    for start in range(0, n, 1024):
        out = model(x[start : start + 1024])
        loss_sum += float(
            nn.functional.cross_entropy(out, y[start : start + 1024], reduction="sum")
        )
        correct += int((out.argmax(1) == y[start : start + 1024]).sum())
    return n, {"loss": loss_sum / n, "accuracy": correct / n}


_SERVED: dict[tuple[int, str, tuple[int, ...]], nn.Module] = {}


@torch.no_grad()
def predict(arrays: Arrays, inputs: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Serving entrypoint (``teeflow serve``): ``inputs["input"]`` is a float32 batch of
    images in [0, 1], shape ``[N, H, W]`` (or ``[N, H*W]`` for the MLP); returns
    ``{"probabilities": [N, classes] float32, "label": [N] int64}``. The model (config
    ``model``, ``normalize`` as in training) is built once per arrays object."""
    _setup(config)
    x = np.asarray(inputs.get("input"), dtype=np.float32)
    if x.ndim < 2:
        raise FLError('predict needs inputs["input"] of shape [N, ...]')
    name = str(_cfg(config, "model"))
    shape = tuple(int(d) for d in x.shape[1:])
    key = (id(arrays), name, shape)
    model = _SERVED.get(key)
    if model is None:
        classes = int(np.asarray(arrays[sorted(arrays)[-1]]).shape[0])
        model = build_model(name, shape, classes)
        load_arrays(model, dict(arrays))
        model.eval()
        _SERVED.clear()
        _SERVED[key] = model
    if bool(_cfg(config, "normalize")):
        x = (x - np.float32(0.5)) / np.float32(0.5)
    logits = model(torch.from_numpy(np.ascontiguousarray(x)))
    probs = torch.softmax(logits, dim=1)
    return {"probabilities": probs.numpy().astype(np.float32),
            "label": probs.argmax(dim=1).numpy().astype(np.int64)}


def predict_metadata(arrays: Arrays, config: dict[str, Any]) -> dict[str, Any]:
    """Tensor metadata of :func:`predict` for OIP ``GET /v2/models/{name}``."""
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, -1, -1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
    }
