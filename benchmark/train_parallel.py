"""Training step of a job: one process, or ``train.devices`` DDP ranks started by the job.

:func:`fit` is what :func:`benchmark.job.run_job` calls. With one device it builds the loader
and calls :func:`benchmark.train.train` in this process, as detbench always did. With N > 1
it spawns N ranks (:func:`benchmark.distributed.run_ranks`); each builds the same detector
from the config (same seed; DDP also broadcasts rank 0's weights), wraps it in
DistributedDataParallel, reads its shard through a DistributedSampler and runs the same
training loop. Rank 0 writes the checkpoint and a summary; this process then loads the
trained weights into its own model, so evaluation and timing run once, on one device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from benchmark.build import build_detector
from benchmark.data import build_loader
from benchmark.device import Device
from benchmark.distributed import Ranks, run_ranks
from benchmark.identity import fingerprint, identity_config
from benchmark.recipe import TrainingRecipe, frozen_batchnorm
from benchmark.timing_lock import work_gate
from benchmark.train import (
    CHECKPOINT_FILE,
    TrainResult,
    load_checkpoint,
    train,
    training_memory_format,
)

log = logging.getLogger(__name__)
SUMMARY_FILE = "train_summary.json"


def fit(
    cfg: DictConfig,
    model: torch.nn.Module,
    train_set: Dataset,
    num_classes: int,
    device: Device,
    out_dir: Path,
    *,
    progress: bool = True,
) -> tuple[TrainResult, TrainingRecipe]:
    """Train ``model`` per ``cfg.train`` (scaled learning rate and warm-up, BN mode).

    Returns:
        The training record (losses averaged over ranks; the whole training when resumed)
        and the recipe that ran; ``model`` holds the trained weights, on ``device``, with
        plain BatchNorm layers. Checkpoints carry the job's configuration fingerprint
        (``benchmark.identity``), computed here from ``cfg``.

    Raises:
        ValueError: a recipe the device cannot run (see :meth:`TrainingRecipe.check`).
    """
    recipe = TrainingRecipe.from_cfg(cfg.train)
    recipe.check(device)
    tcfg = recipe.train_cfg(cfg.train)
    ident = identity_config(cfg)
    identity = (fingerprint(ident), ident)
    if recipe.world_size == 1:
        loader = build_loader(
            train_set,
            batch_size=recipe.batch_size,
            shuffle=True,
            num_workers=int(cfg.data.get("num_workers", 0)),
            seed=int(cfg.seed),
            drop_last=len(train_set) > recipe.batch_size,
            pin_memory=device.pin_memory,
        )
        # Steps pause while another job on this machine measures (benchmark/timing_lock.py).
        # Not under DDP: a rank paused at the gate while its peers hold the work lock inside
        # an all-reduce waiting for it would deadlock with the measurement.
        with (
            work_gate(device, cfg) as gate,
            frozen_batchnorm(model, recipe.bn_effective == "frozen"),
            training_memory_format(model, bool(tcfg.get("channels_last", False))),
        ):
            tr = train(
                model,
                loader,
                tcfg,
                device,
                out_dir,
                progress=progress,
                gate=gate,
                identity=identity,
            )
        return tr, recipe

    if tcfg.get("channels_last", False):
        log.warning("train.channels_last applies to single-process training; DDP ranks train NCHW")
    log.info(
        "training on %d %s ranks (%s), %d images per step, lr %.4g",
        recipe.world_size,
        device.type,
        device.dist_backend,
        recipe.total_batch_size,
        recipe.scaled.lr,
    )
    with tempfile.TemporaryDirectory(prefix="detbench-ddp-") as tmp:
        summary = Path(tmp) / SUMMARY_FILE
        run_ranks(
            _train_rank,
            recipe.world_size,
            device,
            cfg,
            tcfg,
            recipe,
            train_set,
            num_classes,
            str(out_dir),
            progress,
            str(summary),
            identity,
            num_threads=cfg.get("num_threads"),
        )
        tr = TrainResult(**json.loads(summary.read_text()))
    state = load_checkpoint(out_dir / CHECKPOINT_FILE, map_location=device.torch_device)
    model.load_state_dict(state["model"])  # same keys whatever the BN mode (see recipe.py)
    model.to(device.torch_device)
    return tr, recipe


def _train_rank(
    ranks: Ranks,
    cfg: DictConfig,
    tcfg: DictConfig,
    recipe: TrainingRecipe,
    train_set: Dataset,
    num_classes: int,
    out_dir: str,
    progress: bool,
    summary_path: str,
    identity: tuple[str, dict],
) -> None:
    """One rank: build, wrap in DDP, train on this rank's shard; rank 0 writes the summary."""
    if ranks.is_main:  # spawned processes have no logging set up; rank 0 speaks for all
        logging.basicConfig(level=logging.INFO, format="[rank 0] %(message)s")
    torch.manual_seed(int(cfg.seed))
    model = build_detector(cfg, num_classes=num_classes).to(ranks.device.torch_device)
    if recipe.bn_effective == "sync":
        from timm.layers import convert_sync_batchnorm  # also converts timm's BatchNormAct2d

        model = convert_sync_batchnorm(model)
    with frozen_batchnorm(model, recipe.bn_effective == "frozen"):  # before DDP sees params
        ddp = DistributedDataParallel(
            model,
            device_ids=[ranks.device.torch_device.index] if ranks.device.is_cuda else None,
            # Detection losses can leave parameters unused in a step (no positive anchors,
            # an unused pyramid level): DDP must not wait for their gradients.
            find_unused_parameters=True,
        )
        sampler = DistributedSampler(
            train_set,
            num_replicas=ranks.world_size,
            rank=ranks.rank,
            shuffle=True,
            seed=int(cfg.seed),
        )
        loader = build_loader(
            train_set,
            batch_size=recipe.batch_size,
            shuffle=True,
            num_workers=int(cfg.data.get("num_workers", 0)),
            seed=int(cfg.seed),
            sampler=sampler,
            drop_last=len(sampler) > recipe.batch_size,
            pin_memory=ranks.device.pin_memory,
        )
        tr = train(
            ddp,
            loader,
            tcfg,
            ranks.device,
            Path(out_dir),
            progress=progress,
            ranks=ranks,
            identity=identity,
        )
    if ranks.is_main:
        Path(summary_path).write_text(json.dumps(dataclasses.asdict(tr)))
