"""scikit-learn's ``digits``: 1,797 8x8 handwritten digits (UCI "Optical Recognition of
Handwritten Digits", test part), shipped inside scikit-learn, so it loads offline.

Pixel values are 0..16 (``scale = 1/16``). There is no official test set: a stratified
hold-out (:func:`teeflow.datasets.partition.train_test_split`) makes one, deterministic by seed.
"""

from __future__ import annotations

import numpy as np

from teeflow.datasets.base import Dataset, DatasetError, Split
from teeflow.datasets.partition import train_test_split

__all__ = ["DIGITS_SIZE", "load_digits"]

#: Number of examples in the data set.
DIGITS_SIZE = 1797


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load ``sklearn.datasets.load_digits`` and split it.

    Args:
        test_fraction: share of each class held out as the test split, in ``(0, 1)``.
        seed: seed of the hold-out split.

    Returns:
        ``Dataset("digits", train, test)``: ``x`` uint8 ``(n, 8, 8)`` (values 0..16) with
        ``scale=1/16``; ``y`` int64; 1,438 train and 359 test examples at the default 0.2.

    Raises:
        DatasetError: scikit-learn is not installed or returned unexpected shapes.
    """
    try:
        from sklearn.datasets import (  # type: ignore[import-untyped]
            load_digits as _sk_load_digits,
        )
    except ImportError:
        raise DatasetError("the digits data set needs scikit-learn") from None
    bunch = _sk_load_digits()
    images = np.asarray(bunch.images)
    labels = np.asarray(bunch.target)
    if images.shape != (DIGITS_SIZE, 8, 8) or labels.shape != (DIGITS_SIZE,):
        raise DatasetError("scikit-learn digits has an unexpected shape")
    x = images.astype(np.uint8)
    y = labels.astype(np.int64)
    train_idx, test_idx = train_test_split(y, test_fraction=test_fraction, seed=seed)
    full = Split(x, y, 1.0 / 16.0)
    return Dataset("digits", full.subset(train_idx), full.subset(test_idx))
