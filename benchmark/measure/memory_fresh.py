"""CPU memory in a fresh process: spawn a child, rebuild the model there, measure, report.

In a process that already ran the model, the allocator reuses freed memory and the RSS
increase of another call reads near zero; so :func:`fresh_process_peaks` saves the weights
to a temporary file and starts ``python -c "...memory_fresh.main([spec, out])"``. The child
rebuilds the detector from the job's resolved config with ``build_detector``, loads the
weights, and runs the probes of :mod:`benchmark.measure.memory` in order (see there for what
the numbers include).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.device import Device
from benchmark.measure.memory import default_optimizer, probe, synthetic_batch
from benchmark.measure.settings import BenchSettings


def _child(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs in the fresh process: rebuild, load, then one measured call per probe."""
    from omegaconf import OmegaConf

    from benchmark.build import build_detector

    if spec.get("num_threads"):
        torch.set_num_threads(int(spec["num_threads"]))
    device = Device.from_spec(spec["device"])
    cfg = OmegaConf.create(spec["config"])
    num_classes = int(spec["num_classes"])
    model = build_detector(cfg, num_classes=num_classes)
    state = torch.load(spec["state_dict"], map_location="cpu", weights_only=True, mmap=True)
    model.load_state_dict(state)
    del state  # unmaps the file: its pages leave the RSS before the baseline
    model.to(device.torch_device)
    settings = BenchSettings(precision=spec["precision"], channels_last=bool(spec["channels_last"]))
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    opt_cfg = OmegaConf.select(cfg, "train.optimizer")

    def make_optimizer(params):
        if opt_cfg is None:
            return default_optimizer(params)
        from hydra.utils import instantiate

        return instantiate(opt_cfg, params=params)

    results = []
    for mode, batch_size in spec["probes"]:
        images, targets = synthetic_batch(
            int(batch_size), tuple(spec["image_size"]), num_classes, device.torch_device
        )
        results.append(
            probe(
                model,
                mode,
                images,
                targets,
                device,
                settings,
                spec["train_precision"],
                make_optimizer,
            )
        )
    return results


def _resolved(cfg) -> dict[str, Any]:
    """The job config as plain data, without Hydra's node (the child has no Hydra context)."""
    from omegaconf import OmegaConf

    return {
        str(k): OmegaConf.to_container(cfg[k], resolve=True)
        if OmegaConf.is_config(cfg[k])
        else cfg[k]
        for k in cfg
        if k != "hydra"
    }


def fresh_process_peaks(
    model: nn.Module,
    cfg,
    *,
    probes: list[tuple[str, int]],
    image_size: tuple[int, int],
    device: Device,
    settings: BenchSettings,
    train_precision: str = "fp32",
    timeout: float = 900.0,
) -> list[dict[str, Any]]:
    """Measure ``probes`` in order in one fresh child process; see the module docstring.

    One child for all probes because starting one (importing torch, building the model) costs
    seconds, more on a loaded machine. Before each probe the child returns freed heap pages to
    the OS (``peak_of`` calls ``release_free_memory``) and resets the peak, so a later probe
    pays for its own pages; put the smaller probe first (inference, then training).

    Args:
        model: the job's model (its weights are saved for the child to load).
        cfg: the job config; the child builds the detector from it.
        probes: ``(mode, batch_size)`` pairs, mode ``inference`` or ``train``.
        image_size: ``(H, W)`` of the synthetic inputs.

    Returns:
        One :func:`peak_of` result per probe.
    """
    with tempfile.TemporaryDirectory(prefix="detbench-mem-") as tmp:
        weights, spec_path, out_path = (
            Path(tmp) / n for n in ("weights.pt", "spec.json", "out.json")
        )
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        torch.save(state, weights)
        del state
        spec = {
            "config": _resolved(cfg),
            "num_classes": int(model.num_classes),
            "state_dict": str(weights),
            "device": str(device.torch_device),
            "probes": [[mode, int(bs)] for mode, bs in probes],
            "image_size": list(image_size),
            "precision": settings.precision,
            "channels_last": settings.channels_last,
            "train_precision": train_precision,
            "num_threads": torch.get_num_threads(),
        }
        spec_path.write_text(json.dumps(spec))
        # ``-c`` rather than ``-m``: running a module of an already imported package as
        # __main__ would import it twice (runpy's warning).
        code = "import sys; from benchmark.measure.memory_fresh import main; main(sys.argv[1:])"
        proc = subprocess.run(
            [sys.executable, "-c", code, str(spec_path), str(out_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(
                f"memory child failed with code {proc.returncode}: {proc.stderr.strip()[-2000:]}"
            )
        results = json.loads(out_path.read_text())
    for r in results:
        r["method"] += "_fresh_process"
    return results


def main(argv: list[str]) -> None:
    """Child entry point: ``main([SPEC_JSON, OUT_JSON])`` (see :func:`fresh_process_peaks`)."""
    spec = json.loads(Path(argv[0]).read_text())
    out = _child(spec)
    Path(argv[1]).write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
