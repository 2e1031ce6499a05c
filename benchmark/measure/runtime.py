"""Deployment runtimes: ``predict`` exported to ONNX and run by ONNX Runtime (``bench.backend``).

Only the network is exported, and only the network is replaced: :class:`OnnxPredict` is a
drop-in for :meth:`~models.meta_arch.base.DetectionModel.predict` (a ``[B, 3, H, W]``
normalized batch in, the same dict of tensors out), so ``preprocess`` and ``postprocess``
(decoding, NMS) stay the PyTorch code every backend shares and the latency's stage split
(preprocess / predict / postprocess) compares across backends. The host copies into and out
of the runtime belong to ``predict``: a deployed model pays them too.

Shapes are static per job: a graph is exported for each input shape the job runs (batch 1
at the job's input size; the throughput batch when it is measured), before anything is
timed. An input of another shape raises instead of exporting mid-timing.

The export is ``torch.onnx.export(..., dynamo=True)`` (torch.export, then onnxscript's
operator library) at opset 18. Execution providers come from
:meth:`benchmark.device.Device.onnx_providers`: the CPU provider on the CPU, CUDA on a GPU,
TensorRT for ``onnxruntime_tensorrt``. The runtime's intra-op threads are torch's, so both
backends time with the same threads.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.device import Device
from benchmark.measure.settings import RUNTIME_BACKENDS

__all__ = ["OPSET", "OnnxPredict", "backend_version", "export_predict"]
log = logging.getLogger(__name__)
OPSET = 18


def backend_version(backend: str) -> str:
    """The version of what runs ``predict``: torch's for ``eager``/``compile``, else the
    runtime's (``onnxruntime.__version__``)."""
    if backend in RUNTIME_BACKENDS:
        import onnxruntime

        return onnxruntime.__version__
    return torch.__version__


class _PredictGraph(nn.Module):
    """``predict`` as a module with tensor outputs in a fixed order (what export traces)."""

    def __init__(self, model: nn.Module, predict, names: list[str]):
        super().__init__()
        self.model = model  # registers the weights the export reads
        self.predict = predict
        self.names = names

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.predict(images)
        return tuple(out[k] for k in self.names)


def export_predict(model: nn.Module, example: Tensor, predict=None) -> tuple[bytes, list[str]]:
    """Export ``model.predict`` at the shape of ``example`` to an ONNX model.

    Args:
        model: an eval-mode detector on the CPU or a GPU.
        example: ``[B, 3, H, W]`` normalized batch (what ``preprocess`` returns).
        predict: the eager ``predict`` to export (default ``model.predict``; given once that
            attribute is the runtime itself).

    Returns:
        The serialized ONNX model (input ``images``) and its output names, the keys of
        ``predict``'s dict in sorted order.
    """
    predict = predict or model.predict
    with torch.inference_mode():
        names = sorted(predict(example))
    graph = _PredictGraph(model, predict, names).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, dedup notes)
        program = torch.onnx.export(
            graph,
            (example.clone(),),
            dynamo=True,
            opset_version=OPSET,
            input_names=["images"],
            output_names=names,
            verbose=False,
        )
    return program.model_proto.SerializeToString(), names


class OnnxPredict:
    """Replaces a detector's ``predict`` with ONNX Runtime sessions, one per input shape.

    Args:
        model: the eval-mode detector whose ``predict`` is exported (kept for exporting
            further shapes; the runtime never calls it).
        backend: ``onnxruntime`` or ``onnxruntime_tensorrt``.
        device: where the runtime runs (its execution providers).
        threads: the runtime's intra-op threads (torch's by default).
    """

    def __init__(self, model: nn.Module, backend: str, device: Device, threads: int | None = None):
        import onnxruntime as ort

        self._ort = ort
        self.model = model
        self.eager_predict = model.predict  # before the model's predict becomes this runtime
        self.backend = backend
        self.device = device
        self.providers = device.onnx_providers(backend)
        self.threads = int(threads or torch.get_num_threads())
        self.sessions: dict[tuple[int, ...], Any] = {}
        self.names: list[str] = []
        self.export_seconds = 0.0

    def add_shape(self, example: Tensor) -> None:
        """Export and load the graph for ``example``'s shape (nothing if already there)."""
        shape = tuple(example.shape)
        if shape in self.sessions:
            return
        t0 = time.perf_counter()
        onnx_bytes, self.names = export_predict(self.model, example, self.eager_predict)
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        names = [p for p, _ in self.providers]
        opts = [o for _, o in self.providers]
        session = self._ort.InferenceSession(
            onnx_bytes, options, providers=names, provider_options=opts
        )
        if session.get_providers()[0] != names[0]:  # ORT falls back silently: refuse instead
            raise RuntimeError(
                f"ONNX Runtime did not start the {names[0]} (it has {session.get_providers()}; "
                f"available: {self._ort.get_available_providers()})"
            )
        self.sessions[shape] = session
        self.export_seconds += time.perf_counter() - t0
        log.info("exported predict at %s to ONNX (%.1f s)", list(shape), time.perf_counter() - t0)

    def __call__(self, images: Tensor, targets: Any = None) -> dict[str, Tensor]:
        """``predict``: ``[B, 3, H, W]`` normalized -> the eager ``predict``'s dict."""
        session = self.sessions.get(tuple(images.shape))
        if session is None:
            raise ValueError(
                f"no ONNX graph for input shape {list(images.shape)}: shapes are static per job "
                f"(exported: {[list(s) for s in self.sessions]})"
            )
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs = session.run(self.names, {"images": x})
        dev = images.device
        return {k: torch.from_numpy(v).to(dev) for k, v in zip(self.names, outputs, strict=True)}

    def result_keys(self) -> dict[str, Any]:
        """``runtime_providers`` (as the session runs them), threads and export time."""
        first = next(iter(self.sessions.values()), None)
        return {
            "runtime_providers": first.get_providers() if first is not None else None,
            "runtime_threads": self.threads,
            "runtime_export_seconds": self.export_seconds,
        }
