"""Data sets for federated learning examples: MNIST (IDX files), UCI digits (shipped), and
deterministic per-client partitions (IID, Dirichlet non-IID).

Typical use in a compute package::

    from teeflow.datasets import load_client_data
    data = load_client_data(config["data"])   # "digits?clients=3&index=0&seed=7"
    x, y = data.train.features(), data.train.y
"""

from __future__ import annotations

from teeflow.datasets.base import Dataset, DatasetError, Split
from teeflow.datasets.digits import load_digits
from teeflow.datasets.mnist import MNIST_FILES, gunzip_bounded, load_mnist, parse_idx
from teeflow.datasets.partition import (
    dirichlet_partition,
    iid_partition,
    label_skew,
    partition,
    train_test_split,
)
from teeflow.datasets.spec import DataSpec, load_client_data, load_full_dataset, parse_data_spec

__all__ = [
    "MNIST_FILES",
    "DataSpec",
    "Dataset",
    "DatasetError",
    "Split",
    "dirichlet_partition",
    "gunzip_bounded",
    "iid_partition",
    "label_skew",
    "load_client_data",
    "load_digits",
    "load_full_dataset",
    "load_mnist",
    "parse_data_spec",
    "parse_idx",
    "partition",
    "train_test_split",
]
