"""The two models of the MNIST compute package, and their named float32 arrays.

- ``mlp``: 784-200-200-10 fully connected with ReLU (McMahan et al., AISTATS 2017, "2NN");
  the input size is read from the data (64 for 8x8 digits).
- ``cnn``: the classic 2-conv CNN of the same paper: conv 5x5 32 → max-pool 2 → conv 5x5 64 →
  max-pool 2 → fully connected 512 → 10 (``same`` padding, so 28x28 → 7x7x64 and 8x8 → 2x2x64).

Arrays are the ``state_dict`` tensors as float32 numpy arrays, named as PyTorch names them
(``fc1.weight``...). No buffers (no batch norm), so the arrays are exactly the parameters.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from teeflow.errors import FLError

__all__ = ["CNN", "MLP", "MODELS", "build_model", "load_arrays", "to_arrays"]


class MLP(nn.Module):
    """``in_features``-200-200-``classes`` with ReLU."""

    def __init__(self, in_features: int, hidden: int = 200, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)  # type: ignore[no-any-return]


class CNN(nn.Module):
    """conv5x5(32) → pool → conv5x5(64) → pool → fc(512) → fc(classes); input ``(N, H, W)``."""

    def __init__(self, height: int, width: int, classes: int = 10) -> None:
        super().__init__()
        if height < 4 or width < 4:
            raise FLError("the CNN needs images of at least 4x4 pixels")
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * (height // 4) * (width // 4), 512)
        self.fc2 = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)  # type: ignore[no-any-return]


MODELS = ("mlp", "cnn")


def build_model(name: str, feature_shape: tuple[int, ...], classes: int = 10) -> nn.Module:
    """``mlp`` or ``cnn`` for examples of ``feature_shape`` (``(28, 28)``, ``(8, 8)``...).

    Raises:
        FLError: unknown model, or a CNN for non-2-D examples.
    """
    if name == "mlp":
        return MLP(math.prod(feature_shape), classes=classes)
    if name == "cnn":
        if len(feature_shape) != 2:
            raise FLError("the CNN needs 2-D images")
        return CNN(feature_shape[0], feature_shape[1], classes=classes)
    raise FLError(f"unknown model {name!r} (one of {', '.join(MODELS)})")


def to_arrays(model: nn.Module) -> dict[str, NDArray[np.float32]]:
    """The model's state as named float32 numpy arrays (copies)."""
    return {
        k: v.detach().cpu().numpy().astype(np.float32, copy=True)
        for k, v in model.state_dict().items()
    }


def load_arrays(model: nn.Module, arrays: dict[str, NDArray[np.float32]]) -> None:
    """Load named arrays into ``model`` (same names and shapes required).

    Raises:
        FLError: names or shapes differ from the model's.
    """
    state = model.state_dict()
    if set(state) != set(arrays):
        raise FLError("arrays do not match the model's parameters (wrong model or data?)")
    new = {}
    for name, ref in state.items():
        value = np.asarray(arrays[name], dtype=np.float32)
        if tuple(value.shape) != tuple(ref.shape):
            raise FLError(f"array {name!r} has shape {value.shape}, model wants {tuple(ref.shape)}")
        new[name] = torch.from_numpy(np.array(value, copy=True))
    model.load_state_dict(new)
