"""Data specs: one string names a client's data, so it can travel in a train ``config``.

Grammar (the ``--data SPEC`` of ``teeflow client run`` and ``config["data"]`` of a compute
package; see ``examples/mnist/README.md``)::

    SPEC    := SOURCE [ "?" OPTION ( "&" OPTION )* ]
    SOURCE  := "digits" | "mnist:" DIR | "npz:" FILE
    OPTION  := KEY "=" VALUE

Options (all optional):

========================  ==========================================================  =======
key                       meaning                                                     default
========================  ==========================================================  =======
``clients``               number of parts the train split is cut into                 1
``index``                 which part this client gets (``0..clients-1``)              0
``partition``             ``iid`` or ``dirichlet`` (train split only)                 iid
``alpha``                 Dirichlet concentration                                     0.5
``seed``                  partition seed (same for every client of a federation!)     0
``min_size``              smallest train part                                         1
``test_fraction``         digits only: held-out share                                 0.2
``download``              mnist only: fetch missing files from the mirrors            false
========================  ==========================================================  =======

The client's **test** split is always an IID part (same ``clients``/``index``/``seed``) of the
whole test split, so the example-weighted mean of the clients' evaluation metrics equals the
metric on the whole test set. ``npz:`` files hold ``x_train, y_train, x_test, y_test`` (and an
optional 0-d ``scale``); they are read with ``allow_pickle=False``.

Example: ``digits?clients=3&index=1&partition=dirichlet&alpha=0.3&seed=7``.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from teeflow.datasets.base import Dataset, DatasetError, Split
from teeflow.datasets.partition import iid_partition, partition
from teeflow.errors import ParseError

__all__ = [
    "MAX_NPZ_BYTES",
    "DataSpec",
    "load_client_data",
    "load_full_dataset",
    "parse_data_spec",
]

#: Largest ``npz`` file accepted (bytes).
MAX_NPZ_BYTES = 1 << 30
_MAX_SPEC_CHARS = 4096
_BOOL = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


class DataSpec(BaseModel):
    """A parsed data spec (see the module docstring for the meaning of each field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: Literal["digits", "mnist", "npz"]
    path: str | None = Field(default=None, max_length=_MAX_SPEC_CHARS)
    clients: int = Field(default=1, ge=1, le=100_000)
    index: int = Field(default=0, ge=0)
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(default=0.5, gt=0)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    min_size: int = Field(default=1, ge=0)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    download: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> DataSpec:
        if self.index >= self.clients:
            raise ValueError(f"index {self.index} not in 0..{self.clients - 1}")
        if self.dataset in ("mnist", "npz") and not self.path:
            raise ValueError(f"{self.dataset} needs a path ({self.dataset}:PATH)")
        if self.dataset == "digits" and self.path:
            raise ValueError("digits takes no path")
        if not math.isfinite(self.alpha):
            raise ValueError("alpha must be finite")
        return self

    def to_string(self) -> str:
        """The canonical spec string (parses back to an equal :class:`DataSpec`)."""
        source = self.dataset if self.path is None else f"{self.dataset}:{self.path}"
        opts = []
        defaults = DataSpec.model_fields
        for key in (
            "clients",
            "index",
            "partition",
            "alpha",
            "seed",
            "min_size",
            "test_fraction",
            "download",
        ):
            value = getattr(self, key)
            if value != defaults[key].default:
                text = str(value).lower() if isinstance(value, bool) else str(value)
                opts.append(f"{key}={text}")
        return source + ("?" + "&".join(opts) if opts else "")


def parse_data_spec(text: str) -> DataSpec:
    """Parse a data spec string.

    Raises:
        ParseError: longer than 4096 characters, unknown source or option, duplicate
            option, or a value of the wrong type or range.
    """
    if not isinstance(text, str) or not text or len(text) > _MAX_SPEC_CHARS:
        raise ParseError("data spec must be a non-empty string of at most 4096 characters")
    source, sep, query = text.partition("?")
    name, colon, path = source.partition(":")
    fields: dict[str, object] = {"dataset": name}
    if colon:
        fields["path"] = path
    if sep:
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            if not eq or key in fields or key in ("dataset", "path"):
                raise ParseError(f"data spec: bad or duplicate option {item[:64]!r}")
            if key == "download":
                if value.lower() not in _BOOL:
                    raise ParseError("data spec: download must be true or false")
                fields[key] = _BOOL[value.lower()]
            else:
                fields[key] = value
    try:
        return DataSpec.model_validate(fields)
    except ValidationError as exc:
        parts = [
            f"{'.'.join(str(x) for x in e.get('loc', ())) or 'spec'}: {e.get('msg', 'invalid')}"
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise ParseError("invalid data spec: " + "; ".join(parts)) from None


def _load_npz(path: str) -> Dataset:
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise DatasetError(f"cannot read {p}: {exc.strerror or exc}") from None
    if size > MAX_NPZ_BYTES:
        raise DatasetError(f"{p} larger than {MAX_NPZ_BYTES} bytes")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in ("x_train", "y_train", "x_test", "y_test")}
            scale = float(npz["scale"]) if "scale" in npz.files else 1.0
    except KeyError as exc:
        raise DatasetError(f"{p}: missing array {exc}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise DatasetError(f"{p}: not a valid npz data file ({type(exc).__name__})") from None
    for key in ("y_train", "y_test"):
        if not np.issubdtype(arrays[key].dtype, np.integer):
            raise DatasetError(f"{p}: {key} must hold integers")
    return Dataset(
        "npz",
        Split(arrays["x_train"], arrays["y_train"].astype(np.int64), scale),
        Split(arrays["x_test"], arrays["y_test"].astype(np.int64), scale),
    )


@functools.lru_cache(maxsize=4)
def _base(dataset: str, path: str | None, test_fraction: float, download: bool) -> Dataset:
    if dataset == "digits":
        from teeflow.datasets.digits import load_digits

        return load_digits(test_fraction=test_fraction)
    if dataset == "mnist":
        from teeflow.datasets.mnist import load_mnist

        return load_mnist(os.fspath(path or ""), download=download)
    return _load_npz(path or "")


def load_full_dataset(spec: DataSpec) -> Dataset:
    """The whole data set a spec names, ignoring ``clients``/``index`` (cached, 4 entries).

    Raises:
        DatasetError, ParseError: see :func:`~teeflow.datasets.mnist.load_mnist` and
            :func:`~teeflow.datasets.digits.load_digits`.
    """
    return _base(spec.dataset, spec.path, spec.test_fraction, spec.download)


def load_client_data(spec: DataSpec | str) -> Dataset:
    """This client's share: part ``index`` of the train split (``partition`` scheme) and an
    IID part ``index`` of the test split.

    Raises:
        ParseError: a malformed spec string.
        DatasetError: the data cannot be loaded or partitioned as asked.
    """
    s = parse_data_spec(spec) if isinstance(spec, str) else spec
    full = load_full_dataset(s)
    if s.clients == 1:
        return full
    train_parts = partition(
        full.train.y,
        s.clients,
        scheme=s.partition,
        alpha=s.alpha,
        seed=s.seed,
        min_size=s.min_size,
    )
    test_parts = iid_partition(len(full.test), s.clients, seed=s.seed, min_size=0)
    return Dataset(
        full.name,
        full.train.subset(train_parts[s.index]),
        full.test.subset(test_parts[s.index]),
        full.num_classes,
    )
