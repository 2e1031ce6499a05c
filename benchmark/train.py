"""A plain training loop: optimizer and schedule from config, warm-up, clipping, AMP on CUDA,
checkpoint save/resume, a progress bar with the losses, and a hard stop on NaN/inf losses or
weights.

A checkpoint carries the job's configuration fingerprint (``benchmark.identity``) and the
training totals so far (seconds, images, loss history, segments), so a job resumed from it
reports its whole training; a checkpoint of another configuration is never resumed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from benchmark.device import Device
from benchmark.distributed import SINGLE, Ranks
from benchmark.results import atomic_write
from benchmark.spec import OptimizerSpec
from benchmark.timing_lock import NO_GATE, WorkGate

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"


class TrainingDiverged(RuntimeError):
    """A loss or a weight became NaN or infinite: the job fails instead of reporting garbage."""


class CheckpointMismatch(RuntimeError):
    """The job folder's checkpoint belongs to another configuration: it is never resumed."""


@dataclass
class TrainResult:
    """What the job records about training, over every segment of a resumed training.

    Attributes:
        iters: iterations done in total (including those before a resume).
        seconds: training wall time (data loading included), summed over segments; None when
            a resumed checkpoint did not record its time. It includes any time paused while
            other jobs on the machine measured (``paused_seconds``).
        final_loss: mean total loss over the last ``log_every`` iterations.
        images_per_second: training throughput, images over ``seconds`` (all segments).
        history: ``[{"iter", "lr", "loss", <loss terms>}]`` every ``log_every`` iterations,
            from iteration 1 on (earlier segments' entries come from the checkpoint).
        resumed: the training continued from a checkpoint of the job folder.
        segments: ``[{"start_iter", "end_iter", "seconds", "images"}]``, one per process
            that trained (one without a resume).
        paused_seconds: time this process spent waiting at the work gate for other jobs'
            measurements (``benchmark.timing_lock.WorkGate``); 0 when no other job measured.
    """

    iters: int
    seconds: float | None
    final_loss: float | None
    images_per_second: float | None = None
    history: list[dict] = field(default_factory=list)
    resumed: bool = False
    segments: list[dict] = field(default_factory=list)
    paused_seconds: float = 0.0

    def result_keys(self) -> dict:
        """The result.json keys (documented in results/README.md)."""
        return {
            "train_iters": self.iters,
            "train_seconds": self.seconds,
            "final_loss": self.final_loss,
            "train_images_per_second": self.images_per_second,
            "train_history": self.history,
            "resumed": self.resumed,
            "train_segments": self.segments,
            "train_paused_seconds": self.paused_seconds,
        }


@dataclass
class Totals:
    """Training totals carried by a checkpoint (see :class:`TrainResult`)."""

    seconds: float | None = 0.0
    images: int = 0
    history: list[dict] = field(default_factory=list)
    segments: list[dict] = field(default_factory=list)

    @classmethod
    def from_state(cls, state: dict) -> Totals:
        t = state.get("totals")
        if not isinstance(t, dict):  # a checkpoint without totals: its time is unknown
            return cls(seconds=None) if int(state.get("iter", 0)) > 0 else cls()
        return cls(
            seconds=t.get("seconds"),
            images=int(t.get("images", 0)),
            history=list(t.get("history", [])),
            segments=list(t.get("segments", [])),
        )

    def plus(self, start: int, end: int, seconds: float, images: int, history: list) -> Totals:
        """These totals followed by a segment from iteration ``start`` to ``end`` (nothing is
        added when it trained no step: resuming a finished training costs no training time)."""
        if end <= start:
            return Totals(self.seconds, self.images, [*self.history], [*self.segments])
        segment = {"start_iter": start, "end_iter": end, "seconds": seconds, "images": images}
        return Totals(
            seconds=None if self.seconds is None else self.seconds + seconds,
            images=self.images + images,
            history=[*self.history, *history],
            segments=[*self.segments, segment],
        )

    def state(self) -> dict:
        return {
            "seconds": self.seconds,
            "images": self.images,
            "history": self.history,
            "segments": self.segments,
        }


SCHEDULES = ("constant", "cosine", "step", "exponential")  # train.schedule (lr_factor)


def lr_factor(
    it: int,
    *,
    max_iters: int,
    warmup_iters: int,
    warmup_factor: float,
    schedule: str,
    steps: tuple[float, ...] = (0.67, 0.89),
    gamma: float = 0.1,
    warmup_factors: Sequence[float] | None = None,
    decay_steps: int | None = None,
    decay_rate: float = 0.95,
    scale: float = 1.0,
) -> float:
    """Learning-rate multiplier at iteration ``it``: warm-up, then the schedule.

    The multiplier applies to the optimizer's rate, which under MegDet's recipe is already
    the scaled ``scale * lr`` (:mod:`benchmark.recipe`).

    Args:
        warmup_iters: warm-up length in steps.
        warmup_factor: the linear warm-up climbs from ``warmup_factor`` to 1.
        schedule: ``constant``; ``cosine`` (to 0 at ``max_iters``); ``step`` (times ``gamma``
            at each fraction of ``max_iters`` in ``steps``, the papers' 10x drops); or
            ``exponential`` (times ``decay_rate`` every ``decay_steps`` steps, staircase:
            Huang et al.'s SSD, 0.95 every 800K steps).
        warmup_factors: instead of the linear warm-up, a piecewise-constant one: equal
            parts of ``warmup_iters`` at these multipliers (Huang et al.'s SSD over VGG-16:
            0.8^2, then 0.8, of the base rate for 10K steps each).
        scale: the linear-scaling factor k = total / reference batch (MegDet). For k > 1 the
            rate also ramps linearly over the warm-up from ``1 / k`` of the scaled rate, i.e.
            from the small-batch rate, to the scaled rate (Goyal et al.'s gradual warm-up):
            the product with the warm-up above starts at what the small-batch run starts
            at and reaches ``k`` times it at ``warmup_iters``, never later.
    """
    ramp = 1.0
    if scale > 1.0 and it < warmup_iters:
        ramp = (1.0 + (scale - 1.0) * it / warmup_iters) / scale
    if it < warmup_iters:
        if warmup_factors:
            part = min(len(warmup_factors) - 1, it * len(warmup_factors) // warmup_iters)
            return float(warmup_factors[part]) * ramp
        alpha = it / max(1, warmup_iters)
        return (warmup_factor * (1 - alpha) + alpha) * ramp
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (it - warmup_iters) / max(1, max_iters - warmup_iters)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return gamma ** sum(it >= s * max_iters for s in steps)
    if schedule == "exponential":
        if not decay_steps or decay_steps < 1:
            raise ValueError("schedule=exponential needs train.decay_steps >= 1")
        return decay_rate ** (it // int(decay_steps))
    raise ValueError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")


def schedule_factor(cfg) -> Callable[[int], float]:
    """:func:`lr_factor` as configured by a ``train`` config node (``lr_scale`` is added by
    :meth:`benchmark.recipe.TrainingRecipe.train_cfg` under MegDet's recipe).

    Raises:
        ValueError: an unknown schedule, found now rather than after the warm-up.
    """
    warmup_factors = cfg.get("warmup_factors")
    kwargs = {
        "max_iters": int(cfg.max_iters),
        "warmup_iters": int(cfg.warmup_iters),
        "warmup_factor": float(cfg.warmup_factor),
        "schedule": str(cfg.schedule),
        "warmup_factors": [float(f) for f in warmup_factors] if warmup_factors else None,
        "decay_steps": cfg.get("decay_steps"),
        "decay_rate": float(cfg.get("decay_rate", 0.95)),
        "scale": float(cfg.get("lr_scale", 1.0)),
    }
    lr_factor(kwargs["warmup_iters"], **kwargs)  # validates the schedule after the warm-up
    return functools.partial(lr_factor, **kwargs)


def _batches(loader: DataLoader) -> Iterator:
    """Endless iteration over ``loader``; a DistributedSampler gets its epoch set."""
    epoch = 0
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


@contextlib.contextmanager
def training_memory_format(model: nn.Module, channels_last: bool) -> Iterator[None]:
    """Train in NHWC (``train.channels_last``): the 4-D weights are converted, so every
    convolution's output follows (PyTorch picks channels_last when input or weight is), and
    oneDNN's depthwise and batch-norm kernels run faster on it on CPU (docs/sweeps.md has
    the paired measurement). On exit the weights are contiguous again, so evaluation and the
    measurements see the model the ``bench`` settings describe."""
    if not channels_last:
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def to_device(images, targets, device: torch.device):
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [
        {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
        for t in targets
    ]
    return images, targets


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer,
    scheduler,
    it: int,
    *,
    identity: tuple[str, dict] | None = None,
    totals: Totals | None = None,
) -> None:
    """Save atomically (a uniquely named temporary file, then rename), so an interrupted save
    keeps the previous checkpoint and two processes never write one temporary file.

    Args:
        identity: ``(config_fingerprint, identity config)`` of the job
            (``benchmark.identity``); stored so the checkpoint is resumed only by its job.
        totals: the training totals up to ``it``.

    Raises:
        TrainingDiverged: a weight is NaN or infinite (such a checkpoint is never written).
    """
    check_finite_weights(model, f"at iteration {it}")
    fp, config = identity if identity is not None else (None, None)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "iter": it,
        "config_fingerprint": fp,
        # JSON text: a plain str loads under weights_only whatever the config holds
        "config": json.dumps(config) if config is not None else None,
        "totals": (totals or Totals()).state(),
    }
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def check_finite_weights(model: nn.Module | dict, when: str) -> None:
    """Raise :class:`TrainingDiverged` when a floating parameter or buffer is NaN or infinite.

    Args:
        model: a module or a state dict.
        when: where in training, for the message (``at iteration 300``).
    """
    tensors = model.state_dict() if isinstance(model, nn.Module) else model
    bad = [
        (name, int((~torch.isfinite(t)).sum()), t.numel())
        for name, t in tensors.items()
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        listed = ", ".join(f"{n} ({k} of {m})" for n, k, m in bad[:5])
        more = f" and {len(bad) - 5} more tensors" if len(bad) > 5 else ""
        raise TrainingDiverged(
            f"weights became NaN or infinite {when}: {listed}{more}; lower "
            "train.optimizer.lr, raise train.warmup_iters or set train.grad_clip"
        )


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint as data only (``weights_only=True``): a checkpoint is not trusted code.

    Raises:
        RuntimeError: the file cannot be loaded.
        TrainingDiverged: its weights hold NaN or infinite values.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, wrong format
        raise RuntimeError(f"cannot load checkpoint {path}: {e}") from e
    weights = state.get("model", state) if isinstance(state, dict) else {}
    if isinstance(weights, dict):
        check_finite_weights(weights, f"in {path}")
    return state


def checkpoint_identity(path: Path) -> dict | None:
    """``{"config_fingerprint", "config"}`` of the checkpoint at ``path`` (None values when it
    predates them), or None when there is no file. Reads lazily (``mmap``): the weights stay on
    disk.

    Raises:
        RuntimeError: the file exists but cannot be read as a checkpoint.
    """
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise RuntimeError(
            f"cannot read checkpoint {path}: {e} (delete it, or run with force=true to train "
            "from scratch)"
        ) from e
    config = state.get("config") if isinstance(state, dict) else None
    return {
        "config_fingerprint": state.get("config_fingerprint") if isinstance(state, dict) else None,
        "config": json.loads(config) if isinstance(config, str) else None,
    }


def train(
    model: nn.Module,
    loader: DataLoader,
    cfg,
    device: Device,
    out_dir: Path,
    *,
    progress: bool = True,
    ranks: Ranks = SINGLE,
    gate: WorkGate = NO_GATE,
    identity: tuple[str, dict] | None = None,
) -> TrainResult:
    """Train ``model`` for ``cfg.max_iters`` iterations, or resume to them.

    Args:
        model: a detector in torchvision convention: ``model(images, targets)`` returns a
            dict of scalar losses in training mode.
        loader: yields ``(list of [3, H, W] images, list of target dicts)``.
        cfg: the ``train`` config node (see ``sweeps/train/default.yaml``).
        device: where to train.
        out_dir: the job folder; ``checkpoint.pt`` is written there.
        ranks: data-parallel context when ``model`` is wrapped in DDP
            (``benchmark.distributed``): rank 0 alone writes checkpoints and shows progress,
            logged losses are averaged over ranks. The default is one process.
        gate: every step runs as one of its work units, so it never overlaps another job's
            measurement on this machine (``benchmark.timing_lock``); the default never waits.
        identity: ``(config_fingerprint, identity config)`` of the job: written into every
            checkpoint, and a checkpoint with another fingerprint is never resumed. None
            (tests, tools) writes and resumes checkpoints without one.

    Returns:
        The whole training's record: a resumed training adds the checkpoint's totals (time,
        images, history, segments) to this process's.

    Raises:
        TrainingDiverged: on a NaN or infinite loss, or NaN or infinite weights at a
            checkpoint or at the end of training.
        CheckpointMismatch: ``checkpoint.pt`` was written by another configuration.
    """
    model.to(device.torch_device).train()
    net = ranks.unwrap(model)  # the weights without DDP's ``module.`` prefix: checkpoints
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = OptimizerSpec.from_cfg(cfg.optimizer).build(params)  # as the memory probe's
    max_iters = int(cfg.max_iters)

    factor = schedule_factor(cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    ckpt_path = out_dir / CHECKPOINT_FILE
    start = 0
    before = Totals()  # what earlier segments did (from the checkpoint)
    if cfg.get("resume", True) and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device.torch_device)
        if identity is not None and state.get("config_fingerprint") != identity[0]:
            raise CheckpointMismatch(
                f"{ckpt_path} was written by another configuration (fingerprint "
                f"{state.get('config_fingerprint')}, this job {identity[0]}); it is never "
                "resumed: run with force=true to train from scratch, or use another folder"
            )
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["iter"])
        before = Totals.from_state(state)
        log.info("resumed from %s at iteration %d", ckpt_path, start)
    resumed = start > 0

    use_amp = bool(cfg.get("amp", False)) and device.is_cuda
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    clip = float(cfg.get("grad_clip") or 0.0)
    log_every = max(1, int(cfg.get("log_every", 10)))
    ckpt_every = int(cfg.get("checkpoint_every") or 0)

    history: list[dict] = []
    window: list[float] = []
    images_seen = 0
    t0 = time.perf_counter()
    batches = _batches(loader)
    bar = tqdm(
        total=max_iters,
        initial=start,
        desc="train",
        unit="it",
        disable=not progress or not ranks.is_main,
        dynamic_ncols=True,
        leave=False,
    )
    it = start
    while it < max_iters:
        with gate.unit():
            images, targets = to_device(*next(batches), device.torch_device)
            with device.autocast(str(cfg.get("amp_dtype", "fp16")) if use_amp else "fp32"):
                losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                terms = {k: float(v) for k, v in losses.items()}
                raise TrainingDiverged(
                    f"loss became {float(loss)} at iteration {it} ({terms}); "
                    "lower train.optimizer.lr or raise train.warmup_iters"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip)
            scaler.step(optimizer)
            scaler.update()
            step_lr = optimizer.param_groups[0]["lr"]  # the rate this step used (logged)
            scheduler.step()
        it += 1
        images_seen += len(images) * ranks.world_size  # DistributedSampler: equal shards
        window.append(float(loss.detach()))
        if it % log_every == 0 or it == max_iters:
            entry = {
                "iter": it,
                "lr": step_lr,
                **ranks.mean(
                    {
                        "loss": sum(window) / len(window),
                        **{k: float(v.detach()) for k, v in losses.items()},
                    }
                ),
            }
            history.append(entry)
            bar.set_postfix({k: f"{v:.3f}" for k, v in entry.items() if k.startswith("loss")})
            window = []
        if ckpt_every and it % ckpt_every == 0 and ranks.is_main and it < max_iters:
            so_far = before.plus(start, it, time.perf_counter() - t0, images_seen, history)
            save_checkpoint(
                ckpt_path, net, optimizer, scheduler, it, identity=identity, totals=so_far
            )
        bar.update(1)
    bar.close()
    total = before.plus(start, it, time.perf_counter() - t0, images_seen, history)
    # A step can turn the weights into NaN without a later loss to show it (the last step).
    check_finite_weights(net, f"at the end of training (iteration {it})")
    if it > start and ranks.is_main:
        save_checkpoint(ckpt_path, net, optimizer, scheduler, it, identity=identity, totals=total)
    final = total.history[-1]["loss"] if total.history else None
    seconds = total.seconds
    return TrainResult(
        iters=it,
        seconds=seconds,
        final_loss=final,
        images_per_second=total.images / seconds if seconds and total.images else None,
        history=total.history,
        resumed=resumed,
        segments=total.segments,
        paused_seconds=gate.paused_seconds,
    )
