"""The ``digits`` data set: 1,797 8x8 handwritten digits, shipped with teeflow (45 KB).

The UCI Machine Learning Repository's "Optical Recognition of Handwritten Digits" (E.
Alpaydin, C. Kaynak, 1998; doi:10.24432/C50P49), test part ``optdigits.tes`` — the same
1,797 examples scikit-learn ships as ``load_digits``, so teeflow loads it offline without
scikit-learn. Licence: CC BY 4.0 (``teeflow/datasets/data/DIGITS-LICENSE.md``). The file is a
NumPy ``.npz`` (``images`` uint8 ``(1797, 8, 8)``, ``labels`` uint8 ``(1797,)``) read with
``allow_pickle=False``.

Pixel values are 0..16 (``scale = 1/16``). There is no official test set: a stratified
hold-out (:func:`teeflow.datasets.partition.train_test_split`) makes one, deterministic by seed.
"""

from __future__ import annotations

import io
import zipfile
from importlib import resources

import numpy as np

from teeflow.datasets.base import Dataset, DatasetError, Split
from teeflow.datasets.partition import train_test_split

__all__ = ["DIGITS_SIZE", "load_digits"]

#: Number of examples in the data set.
DIGITS_SIZE = 1797
_FILE = "data/digits.npz"


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load the shipped digits file and split it.

    Args:
        test_fraction: share of each class held out as the test split, in ``(0, 1)``.
        seed: seed of the hold-out split.

    Returns:
        ``Dataset("digits", train, test)``: ``x`` uint8 ``(n, 8, 8)`` (values 0..16) with
        ``scale=1/16``; ``y`` int64; 1,438 train and 359 test examples at the default 0.2.

    Raises:
        DatasetError: the shipped file is missing or not the expected arrays.
    """
    try:
        raw = resources.files("teeflow.datasets").joinpath(_FILE).read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            images = np.asarray(npz["images"])
            labels = np.asarray(npz["labels"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        raise DatasetError(f"the shipped digits file {_FILE} is missing or damaged") from None
    if (
        images.shape != (DIGITS_SIZE, 8, 8)
        or labels.shape != (DIGITS_SIZE,)
        or images.dtype != np.uint8
        or labels.dtype != np.uint8
        or int(images.max()) > 16
        or int(labels.max()) > 9
    ):
        raise DatasetError("the shipped digits file has unexpected arrays")
    x = images
    y = labels.astype(np.int64)
    train_idx, test_idx = train_test_split(y, test_fraction=test_fraction, seed=seed)
    full = Split(x, y, 1.0 / 16.0)
    return Dataset("digits", full.subset(train_idx), full.subset(test_idx))
