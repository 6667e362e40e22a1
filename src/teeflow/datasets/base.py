"""Common types of :mod:`teeflow.datasets`: labelled splits, datasets and their error.

A :class:`Split` holds ``n`` examples: ``x`` of shape ``(n, *feature_shape)`` as stored (MNIST:
raw ``uint8`` pixels, so 60,000 images take 47 MB, not 188 MB) with a ``scale`` that maps them
to ``[0, 1]`` (:meth:`Split.features` gives float32), and ``y`` of shape ``(n,)`` (int64 class
labels ``0..k-1``). A :class:`Dataset` is a named pair of splits (train, test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from teeflow.errors import FLError

__all__ = ["Dataset", "DatasetError", "Split"]


class DatasetError(FLError):
    """A data set cannot be loaded or partitioned as asked (missing files, bad arguments)."""

    code = "fl-dataset"


@dataclass(frozen=True)
class Split:
    """``n`` labelled examples.

    Attributes:
        x: ``(n, *feature_shape)`` stored values (uint8 pixels or float32), images as
            ``(n, height, width)``.
        y: ``(n,)`` int64 labels.
        scale: factor mapping ``x`` to ``[0, 1]`` (``1/255`` for MNIST, ``1/16`` for digits).
    """

    x: NDArray[Any]
    y: NDArray[np.int64]
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.x.ndim < 1 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise DatasetError(f"split shapes do not match: x {self.x.shape}, y {self.y.shape}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example (``(28, 28)`` for MNIST, ``(8, 8)`` for digits)."""
        return tuple(int(d) for d in self.x.shape[1:])

    def subset(self, indices: NDArray[np.int64]) -> Split:
        """The examples at ``indices`` (a copy, in that order).

        Raises:
            DatasetError: an index is out of range.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise DatasetError("subset index out of range")
        return Split(x=self.x[idx], y=self.y[idx], scale=self.scale)

    def features(self) -> NDArray[np.float32]:
        """``x * scale`` as float32, shape ``(n, *feature_shape)`` (a new array)."""
        return (self.x.astype(np.float32) * np.float32(self.scale)).astype(np.float32)


@dataclass(frozen=True)
class Dataset:
    """A named data set with a train and a test split.

    Attributes:
        name: ``"mnist"``, ``"digits"``, ...
        train: the training split.
        test: the test split.
        num_classes: number of label values (10 for both built-in sets).
    """

    name: str
    train: Split
    test: Split
    num_classes: int = 10
