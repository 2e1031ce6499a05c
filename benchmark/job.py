"""One job = one configuration: build, train (or load), evaluate, measure, write result.json.

A job never raises into the sweep: a broken dataset or a crash becomes ``status: failed``
with the error (and ``traceback.txt`` in the job folder); a combination that cannot work
(e.g. an extractor that cannot be split for a two-stage detector) becomes ``status: skipped``
with the reason. A job's identity is its resolved configuration (``benchmark.identity``): a
job whose folder holds an ``ok`` result with its own fingerprint is not run again, so an
interrupted sweep resumes where it stopped; a folder holding another configuration's work is
never reused (``benchmark.job_folder``; docs/bad_input.md is the contract).
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from omegaconf import DictConfig, OmegaConf

from benchmark.bootstrap import BootstrapSettings
from benchmark.build import architecture_keys
from benchmark.config_checks import SettingsError, check_settings
from benchmark.data import DatasetError, build_data
from benchmark.deploy import prepare_runtime
from benchmark.device import Device
from benchmark.evaluate import ACCURACY_KEYS, evaluate
from benchmark.identity import fingerprint, identity_config, resolved_config, result_fingerprint
from benchmark.job_folder import (
    clear_stale_outputs,
    folder_lock,
    other_configuration,
    record_refusal,
)
from benchmark.measure import BenchSettings, measure
from benchmark.measure.environment import environment
from benchmark.measure.parity import ParityError
from benchmark.measure.settings import RUNTIME_BACKENDS
from benchmark.recipe import TrainingRecipe
from benchmark.results import RESULT_FILE, git_sha, read_result, write_json_atomic
from benchmark.spec import InputSpec, ModelRecipe
from benchmark.timing_lock import timing_lock, work_gate
from benchmark.train import CHECKPOINT_FILE, checkpoint_identity, load_checkpoint
from benchmark.train_parallel import fit
from models.errors import IncompatibleConfigError

log = logging.getLogger("detbench")
REFUSED = "refused"  # status of a job that did not run (never written to result.json)


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


def _as_int(value: Any) -> Any:
    """``int(value)`` when it is a whole number, else the value as given (a bad setting is
    recorded as written)."""
    try:
        return int(value) if float(value) == int(value) else value
    except (TypeError, ValueError, OverflowError):
        return value


def base_result(cfg: DictConfig, device: Device | None) -> dict[str, Any]:
    """Identity, environment and config keys present on every result, whatever the status.

    ``device`` is None when the job failed before its device was known (a bad setting): the
    device and environment keys are then null.
    """
    return {
        "status": None,
        "error": None,
        "meta_arch": _choice(cfg, "meta_arch"),
        "extractor": _choice(cfg, "extractor"),
        "dataset": str(cfg.data.get("name")),
        "image_size": _as_int(cfg.data.get("image_size")),
        "device": device.type if device else None,
        "device_name": device.name if device else None,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "num_threads": torch.get_num_threads(),
        "git_sha": git_sha(),
        "config_fingerprint": fingerprint(identity_config(cfg)),
        "seed": _as_int(cfg.get("seed")),
        "config": resolved_config(cfg),
        # devices, versions, flags
        **(environment(device, OmegaConf.select(cfg, "bench.precision")) if device else {}),
    }


def run_job(
    cfg: DictConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run one configuration and write ``out_dir/result.json``. Never raises for job errors.

    Holding the folder's lock (a second process on the same folder waits for it), in order:

    1. the folder holds an ``ok`` result with this job's fingerprint: returned as is, nothing
       runs (``force=true`` runs it again);
    2. it holds an ``ok`` result or a ``checkpoint.pt`` of another configuration: the job is
       refused, the folder keeps what it holds (plus ``refused.json``), and the returned dict
       says ``status: refused`` with the message;
    3. the settings are checked (``benchmark.config_checks``): a bad one fails the job before
       any data is built;
    4. the job builds, trains (resuming the folder's checkpoint of this configuration, unless
       ``force=true``, which trains from scratch), evaluates and measures.

    Args:
        cfg: the job's config.
        out_dir: the job folder.
        progress: tqdm bars.
        on_start: called once the job is going to run in the folder (after 1 and 2), e.g. to
            write Hydra's config files, so a refused job never overwrites them.

    Returns:
        The result (as written to result.json), or the refusal (not written).
    """
    out_dir = Path(out_dir)
    ident = identity_config(cfg)
    fp = fingerprint(ident)
    force = bool(cfg.get("force", False))
    with folder_lock(out_dir):
        previous = read_result(out_dir)
        same = previous is not None and result_fingerprint(previous) == fp
        if not force and same and previous.get("status") == "ok":
            log.info("%s already has an ok result; skipping (force=true runs it again)", out_dir)
            return previous
        checkpoint_error = None
        if not force:
            try:
                ckpt = checkpoint_identity(out_dir / CHECKPOINT_FILE)
            except RuntimeError as e:  # unreadable: neither ours nor another's to judge
                ckpt, checkpoint_error = None, e
            refusal = other_configuration(out_dir, previous, fp, ckpt)
            if refusal is not None:
                label = f"{_choice(cfg, 'meta_arch')}/{_choice(cfg, 'extractor')}"
                message = refusal.message(out_dir, ident, fp, label)
                log.error("%s", message)
                record_refusal(out_dir, message, ident, fp)
                return {
                    "status": REFUSED,
                    "error": message,
                    "meta_arch": _choice(cfg, "meta_arch"),
                    "extractor": _choice(cfg, "extractor"),
                    "config_fingerprint": fp,
                    "folder_fingerprint": refusal.their_fingerprint,
                    "job_dir": str(out_dir),
                }
        if previous is not None and not same:
            log.warning(
                "%s: replacing a %s result of another configuration",
                out_dir,
                previous.get("status"),
            )
        elif force and previous is not None:
            log.info("%s: force=true: running again from scratch", out_dir)
        clear_stale_outputs(out_dir, checkpoint=force and not _loads_own_checkpoint(cfg, out_dir))
        if on_start is not None:
            on_start()
        return _run_and_record(cfg, out_dir, progress, checkpoint_error)


def _loads_own_checkpoint(cfg: DictConfig, out_dir: Path) -> bool:
    """``train.checkpoint`` points at the folder's own checkpoint.pt (force must keep it)."""
    path = OmegaConf.select(cfg, "train.checkpoint", default=None)
    return bool(path) and Path(str(path)).resolve() == (out_dir / CHECKPOINT_FILE).resolve()


def _run_and_record(
    cfg: DictConfig, out_dir: Path, progress: bool, checkpoint_error: Exception | None
) -> dict[str, Any]:
    """Check the settings, run the job, write result.json (whatever happens) and return it."""
    result = base_result(cfg, None)
    t_start = time.perf_counter()
    try:
        check_settings(cfg)  # before any data is built or anything trains
        if checkpoint_error is not None:
            raise checkpoint_error
        device = Device.from_spec(str(cfg.device))
        result = base_result(cfg, device)
        result.update(_run(cfg, device, out_dir, progress))
        result["status"] = "ok"
    except SettingsError as e:
        result.update(status="failed", error=f"SettingsError: {e}")
        log.error("bad setting: %s", e)
    except IncompatibleConfigError as e:
        result.update(status="skipped", error=str(e))
        log.warning("skipped: %s", e)
    except DatasetError as e:
        result.update(status="failed", error=f"DatasetError: {e}")
        log.error("dataset problem: %s", e)
    except ParityError as e:  # never timed: the numbers say how far off the runtime is
        result.update(e.keys, status="failed", error=f"ParityError: {e}")
        log.error("%s", e)
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
    intervals = BootstrapSettings.from_cfg(cfg.get("eval"))  # checked before any work
    num_threads = cfg.get("num_threads")
    if num_threads:
        torch.set_num_threads(int(num_threads))

    # The config is read here, once, and handed on as typed objects (benchmark/spec.py):
    # the input (resize mode and sizes; the model class decides the mode), the bench
    # settings (a typo fails before any work), and the recipe the model is built from.
    spec = InputSpec.from_cfg(cfg)
    bench = BenchSettings.from_cfg(cfg.get("bench"))
    # Build the model only once the data is known to be usable (num_classes comes from it).
    data = build_data(
        cfg.data,
        resize_mode=spec.resize_mode,
        image_size=spec.image_size,
        max_size=spec.max_size,
        augment=bool(cfg.data.get("augment", False)),
        progress=progress,
    )
    # Shorter-side resizing keeps the aspect ratio: the shape a typical validation image
    # gets, not M x M, is what anchors are counted and memory is probed at.
    spec = spec.with_typical_shape(_original_sizes(data.val))
    recipe = ModelRecipe.from_cfg(cfg, len(data.class_names), cuda=device.is_cuda)
    model = recipe.build()
    model.to(device.torch_device)
    out: dict[str, Any] = {
        "num_classes": len(data.class_names),
        "class_names": data.class_names,
        "data_stats": data.stats,
        "data_warnings": data.warnings,
        "params": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "num_anchors": _num_anchors(model, spec.shape),
        **spec.result_keys(),  # resize_mode, input_shape
        **model.info().result_keys(),  # family, display name, neck, proposals: the report's names
        **architecture_keys(model),  # output_stride, crop_size
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
        out.update(tr.result_keys())  # whole training across resumed segments
    else:
        out.update(train_iters=0, train_seconds=0.0, final_loss=None)

    evaluate_now = bool(checkpoint) or int(tcfg.max_iters) > 0
    if evaluate_now:
        with work_gate(device, cfg) as gate:  # batches pause while another job measures
            metrics = evaluate(
                model,
                data.val,
                data.val_coco,
                data.label_to_category_id,
                device.torch_device,
                out_dir,
                batch_size=int(cfg.get("eval_batch_size", 8)),
                progress=progress,
                bootstrap=intervals,
                gate=gate,
            )
    else:  # profile-only job: accuracy is not measured
        metrics = dict.fromkeys(ACCURACY_KEYS)
    out.update(metrics)
    prepared = None
    if bench.backend in RUNTIME_BACKENDS:  # export and parity check before anything is timed
        # Export and parity are work like evaluation: they wait while another job measures.
        with work_gate(device, cfg) as gate, gate.unit():
            prepared, runtime_keys = prepare_runtime(
                model,
                data,
                bench,
                device,
                eager_map=metrics.get("map"),
                evaluate=evaluate_now,
                progress=progress,
            )
        out.update(runtime_keys)
    # Speed, FLOPs, memory, roofline (docs/measurement.md); also in profile-only jobs.
    # Under the per-device timing lock: concurrent jobs on this machine measure one at a time.
    with timing_lock(device, cfg) as lock:
        measured = measure(
            model,
            data.val,
            bench,
            device,
            input_spec=spec,
            recipe=recipe,
            out_dir=out_dir,
            prepared=prepared,
        )
    prepared = None
    out.update(measured)
    out.update(lock.result_keys())
    return out


def _original_sizes(dataset) -> list[tuple[int, int]]:
    """``(height, width)`` of each image of a split as stored (before resizing)."""
    return [(rec.height, rec.width) for rec in getattr(dataset, "records", [])]


def _num_anchors(model, size: tuple[int, int]) -> int | None:
    try:
        return int(model.num_anchors(size))
    except NotImplementedError:
        return None
