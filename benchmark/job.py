"""One job = one configuration: build, train (or load), evaluate, measure, write result.json.

A job never raises into the sweep: a broken dataset or a crash becomes ``status: failed``
with the error (and ``traceback.txt`` in the job folder); a combination that cannot work
(e.g. an extractor that cannot be split for a two-stage detector) becomes ``status: skipped``
with the reason. A job whose result.json already says ``ok`` is not run again, so an
interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from omegaconf import DictConfig, OmegaConf

from benchmark.build import build_detector
from benchmark.data import DatasetError, build_data
from benchmark.device import Device
from benchmark.evaluate import METRIC_KEYS, evaluate
from benchmark.measure import measure
from benchmark.measure.environment import environment
from benchmark.recipe import TrainingRecipe
from benchmark.results import RESULT_FILE, git_sha, read_result, write_json_atomic
from benchmark.timing_lock import timing_lock
from benchmark.train import load_checkpoint
from benchmark.train_parallel import fit
from models.errors import IncompatibleConfigError

log = logging.getLogger("detbench")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _choice(cfg: DictConfig, group: str) -> str:
    """The option chosen for a config group (``ssd``, ``mobilenet_v2``...)."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    if choices is not None and group in choices:
        return str(choices[group])
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices[group])
    except (ValueError, KeyError):  # not under Hydra (plain compose in tests)
        node = cfg.get(group)
        return str(node.get("_target_", group)).rsplit(".", 1)[-1] if node is not None else group


def base_result(cfg: DictConfig, device: Device) -> dict[str, Any]:
    """Identity, environment and config keys present on every result, whatever the status."""
    return {
        "status": None,
        "error": None,
        "meta_arch": _choice(cfg, "meta_arch"),
        "extractor": _choice(cfg, "extractor"),
        "dataset": str(cfg.data.name),
        "image_size": int(cfg.data.image_size),
        "device": device.type,
        "device_name": device.name,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "num_threads": torch.get_num_threads(),
        "git_sha": git_sha(),
        "seed": int(cfg.seed),
        "config": resolved_config(cfg),
        **environment(device, OmegaConf.select(cfg, "bench.precision")),  # devices, versions, flags
    }


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The job's config with interpolations resolved, without Hydra's own node."""
    return {
        str(k): OmegaConf.to_container(cfg[k], resolve=True)
        if OmegaConf.is_config(cfg[k])
        else cfg[k]
        for k in cfg
        if k != "hydra"
    }


def run_job(cfg: DictConfig, out_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Run one configuration and write ``out_dir/result.json``. Never raises for job errors."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = read_result(out_dir)
    if previous is not None and previous.get("status") == "ok" and not cfg.get("force", False):
        log.info("%s already has an ok result; skipping (force=true runs it again)", out_dir)
        return previous

    device = Device.from_spec(str(cfg.device))
    result = base_result(cfg, device)
    t_start = time.perf_counter()
    try:
        result.update(_run(cfg, device, out_dir, progress))
        result["status"] = "ok"
    except IncompatibleConfigError as e:
        result.update(status="skipped", error=str(e))
        log.warning("skipped: %s", e)
    except DatasetError as e:
        result.update(status="failed", error=f"DatasetError: {e}")
        log.error("dataset problem: %s", e)
    except Exception as e:  # a job never raises into the sweep
        if (incompatible := _incompatible(e)) is not None:  # wrapped by hydra's instantiate
            result.update(status="skipped", error=str(incompatible))
            log.warning("skipped: %s", incompatible)
        else:
            result.update(status="failed", error=f"{type(e).__name__}: {e}")
            (out_dir / "traceback.txt").write_text(traceback.format_exc())
            log.exception("job failed")
    result["job_seconds"] = time.perf_counter() - t_start
    write_json_atomic(out_dir / RESULT_FILE, result)
    return result


def _incompatible(error: BaseException | None) -> IncompatibleConfigError | None:
    """The IncompatibleConfigError behind ``error``, if any: ``hydra.utils.instantiate``
    re-raises what a constructor raises as an InstantiationException ``from`` it."""
    while error is not None:
        if isinstance(error, IncompatibleConfigError):
            return error
        error = error.__cause__
    return None


def _run(cfg: DictConfig, device: Device, out_dir: Path, progress: bool) -> dict[str, Any]:
    seed_everything(int(cfg.seed))
    num_threads = cfg.get("num_threads")
    if num_threads:
        torch.set_num_threads(int(num_threads))

    # The model class decides how its inputs are resized (square vs shorter side), so build
    # it first, but only after the data is known to be usable (num_classes comes from it).
    resize_mode = _resize_mode(cfg)
    data = build_data(
        cfg.data,
        resize_mode=resize_mode,
        image_size=int(cfg.data.image_size),
        max_size=cfg.data.get("max_size"),
        augment=bool(cfg.data.get("augment", False)),
        progress=progress,
    )
    model = build_detector(cfg, num_classes=len(data.class_names))
    model.to(device.torch_device)
    size = (int(cfg.data.image_size),) * 2
    out: dict[str, Any] = {
        "num_classes": len(data.class_names),
        "class_names": data.class_names,
        "data_stats": data.stats,
        "data_warnings": data.warnings,
        "params": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "num_anchors": _num_anchors(model, size),
        "resize_mode": resize_mode,
    }

    tcfg = cfg.train
    # world_size, total batch, effective lr/warm-up, BN mode (docs/scale_out.md)
    out.update(TrainingRecipe.from_cfg(tcfg).result_keys(device))
    checkpoint = tcfg.get("checkpoint")
    if checkpoint:
        state = load_checkpoint(Path(checkpoint), map_location=device.torch_device)
        model.load_state_dict(state.get("model", state))
        out.update(
            train_iters=int(state.get("iter", 0)),
            train_seconds=0.0,
            final_loss=None,
            checkpoint=str(checkpoint),
        )
    elif int(tcfg.max_iters) > 0:
        # One process, or train.devices DDP ranks; the trained weights end up in `model`.
        tr, _ = fit(
            cfg, model, data.train, len(data.class_names), device, out_dir, progress=progress
        )
        out.update(
            train_iters=tr.iters,
            train_seconds=tr.seconds,
            final_loss=tr.final_loss,
            train_images_per_second=tr.images_per_second,
            train_history=tr.history,
        )
    else:
        out.update(train_iters=0, train_seconds=0.0, final_loss=None)

    evaluate_now = bool(checkpoint) or int(tcfg.max_iters) > 0
    if evaluate_now:
        metrics = evaluate(
            model,
            data.val,
            data.val_coco,
            data.label_to_category_id,
            device.torch_device,
            out_dir,
            batch_size=int(cfg.get("eval_batch_size", 8)),
            progress=progress,
        )
    else:  # profile-only job: accuracy is not measured
        metrics = dict.fromkeys(METRIC_KEYS)
    out.update(metrics)
    # Speed, FLOPs, memory, roofline (docs/measurement.md); also in profile-only jobs.
    # Under the per-device timing lock: concurrent jobs on this machine measure one at a time.
    with timing_lock(device, cfg) as lock:
        measured = measure(
            model, data.val, cfg.get("bench"), device, image_size=size, out_dir=out_dir, cfg=cfg
        )
    out.update(measured)
    out.update(lock.result_keys())
    return out


def _resize_mode(cfg: DictConfig) -> str:
    from hydra.utils import get_class

    return getattr(get_class(cfg.meta_arch._target_), "resize_mode", "square")


def _num_anchors(model, size: tuple[int, int]) -> int | None:
    try:
        return int(model.num_anchors(size))
    except NotImplementedError:
        return None
