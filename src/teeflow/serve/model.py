"""Inference code behind one interface: a compute package's ``predict`` or an ONNX model.

* **Package** (:class:`PackagePredictor`): the agreed compute package's entrypoint
  ``predict(arrays, inputs, config) -> outputs`` (``arrays``: the model's named numpy arrays;
  ``inputs``/``outputs``: ``{name: numpy array}``; PyTorch or numpy inside, as training).
  An optional function ``predict_metadata(arrays, config) -> {"inputs": [...], "outputs":
  [...]}`` (each ``{name, datatype, shape}``, ``-1`` = any size) describes the tensors for
  ``GET /v2/models/{name}``. The package is loaded as training entrypoints are
  (:func:`teeflow.fl.package.unpack_package`, :func:`~teeflow.fl.package.load_entrypoint`).
* **ONNX** (:class:`OnnxPredictor`): an ONNX model run by ``onnxruntime`` (the optional extra
  ``teeflow[onnx]``), created from the model bytes in memory.

Neither writes the model to disk: the package folder holds code only, the weights stay in
this process's memory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from teeflow.errors import Error, WorkloadError
from teeflow.fl.arrays import ArrayDict

__all__ = ["OnnxPredictor", "PackagePredictor", "Predictor", "TensorSpec"]

#: ``{name, datatype, shape}`` as OIP model metadata lists tensors.
TensorSpec = dict[str, Any]
Arrays = dict[str, NDArray[Any]]


class Predictor(Protocol):
    """What the server runs: :meth:`predict` and the tensor metadata."""

    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def predict(self, inputs: Mapping[str, NDArray[Any]]) -> Arrays:
        """Run the model on named input tensors → named output tensors.

        Raises:
            WorkloadError: the inference code failed or returned something else.
        """
        ...

    def close(self) -> None:
        """Release resources (temporary code folder, sessions)."""
        ...


def _outputs(value: object) -> Arrays:
    if not isinstance(value, Mapping) or not value:
        raise WorkloadError("predict must return a non-empty {name: array} mapping")
    out: Arrays = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise WorkloadError("predict output names must be strings")
        out[k] = np.asarray(v)
    return out


class PackagePredictor:
    """A compute package's ``predict`` over the model arrays (module docstring).

    Args:
        archive: the package archive (its digest must be ``package_digest``).
        package_digest: the agreed digest (hex) the model header names.
        arrays: the model's arrays (in memory).
        config: the ``config`` passed to ``predict`` (e.g. ``{"model": "cnn"}``).

    Raises:
        PackageError, VerificationError: the archive does not unpack or has another digest.
        WorkloadError: no ``predict`` entrypoint.
    """

    platform = "teeflow_package"

    def __init__(self, archive: bytes, package_digest: str, arrays: ArrayDict,
                 config: Mapping[str, Any] | None = None) -> None:
        from teeflow.fl.package import load_entrypoint, unpack_package

        self._tmp = tempfile.mkdtemp(prefix="teeflow-serve-")
        try:
            manifest = unpack_package(archive, Path(self._tmp) / "pkg", package_digest)
            callables = {**manifest.entrypoints, **manifest.functions}
            if "predict" not in callables:
                raise WorkloadError("the package has no predict entrypoint")
            self._fn: Callable[..., Any] = load_entrypoint(Path(self._tmp) / "pkg", "predict")
            meta = (load_entrypoint(Path(self._tmp) / "pkg", "predict_metadata")
                    if "predict_metadata" in callables else None)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self._arrays = arrays
        self._config = dict(config or {})
        doc = meta(arrays, dict(self._config)) if meta is not None else {}
        self.inputs: list[TensorSpec] = list(doc.get("inputs", []))
        self.outputs: list[TensorSpec] = list(doc.get("outputs", []))

    def predict(self, inputs: Mapping[str, NDArray[Any]]) -> Arrays:
        """``predict(arrays, inputs, config)`` of the package.

        Raises:
            WorkloadError: the package raised or returned no ``{name: array}`` mapping.
        """
        try:
            result = self._fn(self._arrays, dict(inputs), dict(self._config))
        except Error as exc:
            raise WorkloadError(f"predict failed: {exc}") from None
        except Exception as exc:
            raise WorkloadError(f"predict failed: {type(exc).__name__}") from None
        return _outputs(result)

    def close(self) -> None:
        """Remove the unpacked package folder."""
        shutil.rmtree(self._tmp, ignore_errors=True)


_ORT_TYPES = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
    "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int16)": "INT16",
    "tensor(int8)": "INT8", "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL",
}


class OnnxPredictor:
    """An ONNX model run by ``onnxruntime`` from bytes in memory (CPU provider).

    Raises:
        WorkloadError: ``onnxruntime`` is not installed (``pip install teeflow[onnx]``) or
            the model does not load.
    """

    platform = "onnxruntime_onnx"

    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise WorkloadError("ONNX serving needs onnxruntime: pip install 'teeflow[onnx]'"
                                ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(model, sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise WorkloadError(f"the ONNX model does not load: {type(exc).__name__}") from None

        def spec(t: Any) -> TensorSpec:
            shape = [d if isinstance(d, int) else -1 for d in t.shape]
            return {"name": t.name, "datatype": _ORT_TYPES.get(t.type, "FP32"), "shape": shape}

        self.inputs = [spec(t) for t in self._session.get_inputs()]
        self.outputs = [spec(t) for t in self._session.get_outputs()]

    def predict(self, inputs: Mapping[str, NDArray[Any]]) -> Arrays:
        """Run the session on the named inputs.

        Raises:
            WorkloadError: missing inputs or an onnxruntime failure.
        """
        names = [t["name"] for t in self.inputs]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise WorkloadError(f"missing input tensors: {', '.join(missing)[:200]}")
        try:
            result = self._session.run(None, {n: inputs[n] for n in names})
        except Exception as exc:
            raise WorkloadError(f"inference failed: {type(exc).__name__}") from None
        return {t["name"]: np.asarray(r) for t, r in zip(self.outputs, result, strict=True)}

    def close(self) -> None:
        """Drop the session."""
        self._session = None
