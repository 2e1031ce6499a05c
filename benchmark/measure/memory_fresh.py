"""CPU memory in a fresh process: spawn a child, rebuild the model there, measure, report.

In a process that already ran the model, the allocator reuses freed memory and the RSS
increase of another call reads near zero; so :func:`fresh_process_peaks` saves the weights
to a temporary file and starts ``python -c "...memory_fresh.main([spec, out])"``. The child
rebuilds the detector from the job's :class:`~benchmark.spec.ModelRecipe` (plain data,
pickled with the rest of the :class:`ChildSpec`), loads the weights, and runs the bounded
probes of :mod:`benchmark.measure.memory` in order (see there for what the numbers include,
and :mod:`benchmark.measure.memory_bound` for the bound), each under a hard ``RLIMIT_DATA``
of the budget: a probe that would take more fails with an allocation error, reported as
null with the reason, instead of meeting the kernel's OOM killer.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.device import Device
from benchmark.measure.memory import bounded_peaks
from benchmark.measure.memory_bound import memory_budget_mb
from benchmark.measure.settings import BenchSettings
from benchmark.spec import ModelRecipe


@dataclass(frozen=True)
class ChildSpec:
    """What the child needs; pickled to a private temporary file by the parent."""

    recipe: ModelRecipe
    state_dict: str
    device: str
    probes: list[tuple[str, int]]
    shape: tuple[int, int]
    settings: BenchSettings
    num_threads: int
    budget_mb: float | None


def _child(spec: ChildSpec, out_path: Path) -> None:
    """Runs in the fresh process: rebuild, load, then the bounded probes in order. Results
    are written after each probe, so a child that dies still reports the probes before."""
    torch.set_num_threads(spec.num_threads)
    device = Device.from_spec(spec.device)
    model = spec.recipe.build()
    state = torch.load(spec.state_dict, map_location="cpu", weights_only=True, mmap=True)
    model.load_state_dict(state)
    del state  # unmaps the file: its pages leave the RSS before the baseline
    model.to(device.torch_device)
    if spec.settings.channels_last:
        model.to(memory_format=torch.channels_last)
    # Start the intra-op thread pool before any limit: thread stacks are mapped memory too.
    torch.ones(2**20).add_(1)
    # The parent's budget, or less if the machine has less free memory now.
    own = memory_budget_mb(device, spec.settings.memory_max_fraction)
    budget = min((b for b in (spec.budget_mb, own) if b is not None), default=None)
    results: list[dict[str, Any]] = []
    for mode, batch in spec.probes:
        results += bounded_peaks(
            model,
            [(mode, batch)],
            spec.shape,
            device,
            spec.settings,
            spec.recipe.train_precision,
            spec.recipe.optimizer,
            budget_mb=budget,
            guard=budget is not None,
        )
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results))
        tmp.replace(out_path)


def fresh_process_peaks(
    model: nn.Module,
    recipe: ModelRecipe,
    *,
    probes: list[tuple[str, int]],
    shape: tuple[int, int],
    device: Device,
    settings: BenchSettings,
    budget_mb: float | None,
    timeout: float = 900.0,
) -> list[dict[str, Any]]:
    """Measure ``probes`` in order in one fresh child process; see the module docstring.

    One child for all probes because starting one (importing torch, building the model) costs
    seconds, more on a loaded machine. Before each probe the child returns freed heap pages to
    the OS (``peak_of`` calls ``release_free_memory``) and resets the peak, so a later probe
    pays for its own pages; put the smaller probe first (inference, then training).

    Args:
        model: the job's model (its weights are saved for the child to load).
        recipe: how to rebuild it, and the training step (optimizer, precision).
        probes: ``(mode, batch_size)`` pairs, mode ``inference`` or ``train``.
        shape: ``(H, W)`` of the synthetic inputs (the job's :class:`~benchmark.spec.InputSpec`).
        budget_mb: what one probe may allocate (None: unbounded); the child lowers it when
            less memory is free by the time it runs.

    Returns:
        One :func:`~benchmark.measure.memory_bound.bounded_peak` result per probe (plus
        ``budget_mb``), ``method`` suffixed ``_fresh_process``. A child that dies after
        some probes leaves the others null with the exit code in their ``note``.

    Raises:
        RuntimeError: the child failed (or timed out) before reporting any probe.
    """
    with tempfile.TemporaryDirectory(prefix="detbench-mem-") as tmp:
        weights, spec_path, out_path = (
            Path(tmp) / n for n in ("weights.pt", "spec.pkl", "out.json")
        )
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        torch.save(state, weights)
        del state
        spec = ChildSpec(
            recipe=recipe,
            state_dict=str(weights),
            device=str(device.torch_device),
            probes=[(mode, int(bs)) for mode, bs in probes],
            shape=(int(shape[0]), int(shape[1])),
            settings=settings,
            num_threads=torch.get_num_threads(),
            budget_mb=budget_mb,
        )
        spec_path.write_bytes(pickle.dumps(spec))
        # ``-c`` rather than ``-m``: running a module of an already imported package as
        # __main__ would import it twice (runpy's warning).
        code = "import sys; from benchmark.measure.memory_fresh import main; main(sys.argv[1:])"
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code, str(spec_path), str(out_path)],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            failed = proc.returncode != 0
            failure = f"memory child failed with code {proc.returncode}: "
            failure += proc.stderr.strip()[-2000:]
        except subprocess.TimeoutExpired:  # run() has killed it; keep what it reported
            failed, failure = True, f"memory child timed out after {timeout:.0f} s"
        results = json.loads(out_path.read_text()) if out_path.exists() else []
    if failed and not results:
        raise RuntimeError(failure)
    for r in results:
        if r["method"]:
            r["method"] += "_fresh_process"
    for _, batch in probes[len(results) :]:  # the child died during the first of these
        results.append(
            {
                "peak_mb": None,
                "reserved_mb": None,
                "method": None,
                "value": None,
                "batch_size": int(batch),
                "probe_batch_size": None,
                "source": None,
                "note": f"not measured: the child ended before reporting it; {failure[:500]}",
                "budget_mb": budget_mb,
            }
        )
    return results


def main(argv: list[str]) -> None:
    """Child entry point: ``main([SPEC_PICKLE, OUT_JSON])`` (see :func:`fresh_process_peaks`)."""
    spec = pickle.loads(Path(argv[0]).read_bytes())
    _child(spec, Path(argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
