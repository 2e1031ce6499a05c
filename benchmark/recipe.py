"""MegDet's large-batch recipe (Peng et al. 2018): linear scaling, gradual warm-up, BN modes.

* :func:`linear_scaling` - the learning rate for a total batch from the one tuned for a
  reference batch (``lr = base_lr * total / reference``, the linear scaling rule of Goyal et
  al. 2017 that MegDet section 3.2 re-derives from the gradients' variance). The rule does
  not hold while the weights change fast, so the rate climbs from the small-batch rate to the
  scaled one over the warm-up (Goyal et al.'s "gradual warmup", which MegDet borrows: "set up
  the learning rate small enough at the beginning, such as r. Then, we increase the learning
  rate with a constant speed after every iteration, until to r-hat"). The warm-up keeps its
  length in steps: Goyal et al. fix it in epochs (5 of 90), the same share of the schedule at
  every batch size, and here the schedule is ``train.max_iters`` steps whatever the batch, so
  the same share is the same number of steps; a larger batch never lengthens it.
  :func:`benchmark.train.lr_factor` applies the ramp. A pure function, unit-tested.
* :class:`TrainingRecipe` - the ``train`` config keys of scale-out (``devices``, ``sync_bn``:
  ``sync`` is MegDet's Cross-GPU Batch Normalization, section 3.3, as PyTorch's SyncBatchNorm,
  ``lr_scaling``, ``reference_batch_size``) validated, plus the result keys they imply.
* :func:`frozen_batchnorm` - ``sync_bn=frozen``: BatchNorm layers normalize with their
  running statistics and their affine parameters are not trained (Detectron's
  FrozenBatchNorm), while the modules and state dict stay those of the plain model, so
  checkpoints are interchangeable and the timed model is the same module tree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from benchmark.device import Device

BN_MODES = ("off", "sync", "frozen")
LR_SCALINGS = ("linear", "none")


@dataclass(frozen=True)
class Scaled:
    """What the linear scaling rule gives.

    Attributes:
        factor: ``total_batch / reference_batch`` (1.0 when scaling is off).
        lr: the effective base learning rate, ``base_lr * factor``.
        warmup_iters: the warm-up length in steps: ``base_warmup_iters``, whatever the factor.
    """

    factor: float
    lr: float
    warmup_iters: int


def linear_scaling(
    base_lr: float, base_warmup_iters: int, *, total_batch: int, reference_batch: int
) -> Scaled:
    """Linear scaling rule (Goyal et al. 2017; MegDet 3.2); the warm-up keeps its steps.

    Args:
        base_lr: the learning rate tuned for ``reference_batch`` images per step.
        base_warmup_iters: the warm-up length in steps (unchanged: see the module docstring).
        total_batch: images per optimizer step over all ranks.
        reference_batch: the batch ``base_lr`` was tuned for.

    Raises:
        ValueError: a batch size below 1 or a negative warm-up.
    """
    if total_batch < 1 or reference_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got {total_batch=} {reference_batch=}")
    if base_warmup_iters < 0:
        raise ValueError(f"warm-up must be >= 0 iterations, got {base_warmup_iters}")
    factor = total_batch / reference_batch
    return Scaled(factor, base_lr * factor, int(base_warmup_iters))


@dataclass(frozen=True)
class TrainingRecipe:
    """The scale-out settings of one job, from its ``train`` config node.

    Attributes:
        world_size: data-parallel ranks (``train.devices``).
        batch_size: images per rank per step (``train.batch_size``).
        sync_bn: ``off`` (each rank's own batch statistics), ``sync`` (SyncBatchNorm across
            ranks; CUDA only) or ``frozen`` (running statistics, affine parameters fixed).
        lr_scaling: ``linear`` or ``none``.
        reference_batch_size: the batch ``optimizer.lr`` is tuned for; None means one
            rank's batch, so ``devices=1`` trains exactly as configured.
    """

    world_size: int
    batch_size: int
    sync_bn: str
    lr_scaling: str
    reference_batch_size: int | None
    base_lr: float
    base_warmup_iters: int
    optimizer: str = ""

    @classmethod
    def from_cfg(cls, tcfg: DictConfig) -> TrainingRecipe:
        """Read and validate ``train.devices/sync_bn/lr_scaling/reference_batch_size``.

        Raises:
            ValueError: an unknown mode or a device count below 1.
        """
        sync_bn = tcfg.get("sync_bn", "off")
        # YAML 1.1 reads an unquoted ``off`` as false: accept it rather than fail on it.
        sync_bn = "off" if sync_bn in (False, None) else str(sync_bn)
        if sync_bn not in BN_MODES:
            raise ValueError(f"train.sync_bn must be one of {BN_MODES}, got {sync_bn!r}")
        scaling = str(tcfg.get("lr_scaling", "linear"))
        if scaling not in LR_SCALINGS:
            raise ValueError(f"train.lr_scaling must be one of {LR_SCALINGS}, got {scaling!r}")
        devices = int(tcfg.get("devices", 1))
        if devices < 1:
            raise ValueError(f"train.devices must be >= 1, got {devices}")
        ref = tcfg.get("reference_batch_size")
        return cls(
            world_size=devices,
            batch_size=int(tcfg.batch_size),
            sync_bn=sync_bn,
            lr_scaling=scaling,
            reference_batch_size=int(ref) if ref else None,
            base_lr=float(tcfg.optimizer.lr),
            base_warmup_iters=int(tcfg.warmup_iters),
            optimizer=str(tcfg.optimizer.get("_target_", "")).rsplit(".", 1)[-1],
        )

    @property
    def total_batch_size(self) -> int:
        return self.world_size * self.batch_size

    @property
    def scaled(self) -> Scaled:
        if self.lr_scaling == "none":
            return Scaled(1.0, self.base_lr, self.base_warmup_iters)
        return linear_scaling(
            self.base_lr,
            self.base_warmup_iters,
            total_batch=self.total_batch_size,
            reference_batch=self.reference_batch_size or self.batch_size,
        )

    def check(self, device: Device) -> None:
        """Fail before any process starts when the device cannot run this recipe.

        ``sync`` with several CPU ranks is an error, not a silent fallback: PyTorch's
        SyncBatchNorm has no CPU implementation, and a benchmark row trained with per-rank
        statistics must not claim cross-GPU BN. One rank has nothing to synchronize, so
        ``sync`` is accepted there and behaves as ``off`` (see :attr:`bn_effective`).
        """
        if self.sync_bn == "sync" and self.world_size > 1 and not device.supports_sync_batchnorm:
            raise ValueError(
                "train.sync_bn=sync needs CUDA: PyTorch's SyncBatchNorm has no CPU "
                "implementation. On CPU use train.sync_bn=off (per-rank statistics) or "
                "train.sync_bn=frozen"
            )
        if self.world_size > device.device_count() and device.is_cuda:
            raise ValueError(
                f"train.devices={self.world_size} but only {device.device_count()} CUDA "
                "device(s) are visible"
            )

    @property
    def bn_effective(self) -> str:
        """The BN mode that actually runs: ``sync`` with one rank is plain ``off``."""
        return "off" if self.sync_bn == "sync" and self.world_size == 1 else self.sync_bn

    def train_cfg(self, tcfg: DictConfig) -> DictConfig:
        """``tcfg`` with the scaled learning rate and ``lr_scale`` (the factor), from which
        :func:`benchmark.train.lr_factor` ramps the rate from the small-batch one over the
        warm-up. ``tcfg`` itself is unchanged; with a factor of 1 it is returned as is, so the
        default path is untouched."""
        s = self.scaled
        if s.factor == 1.0:
            return tcfg
        out = OmegaConf.create(OmegaConf.to_container(tcfg, resolve=True))
        out.optimizer.lr = s.lr
        out.lr_scale = s.factor
        return out

    def result_keys(self, device: Device) -> dict[str, Any]:
        """The result.json keys of scale-out (documented in results/README.md)."""
        s = self.scaled
        return {
            "world_size": self.world_size,
            "dist_backend": device.dist_backend if self.world_size > 1 else None,
            "total_batch_size": self.total_batch_size,
            "reference_batch_size": self.reference_batch_size or self.batch_size,
            "lr_scale": s.factor,
            "effective_lr": s.lr,
            "effective_warmup_iters": s.warmup_iters,
            "sync_bn": self.bn_effective,
            "optimizer": self.optimizer or None,  # SGD, RMSprop, AdamW (the class name)
        }


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer (timm's BatchNormAct2d subclasses BatchNorm2d, so it counts)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _keep_eval(module: nn.Module, args) -> None:
    """Forward pre-hook: run in eval mode. Returns None: a value would replace ``args``."""
    module.train(False)


@contextlib.contextmanager
def frozen_batchnorm(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Inside the block, BatchNorm layers run in eval mode and their affine parameters have
    ``requires_grad=False``; the number of layers frozen is yielded.

    A forward pre-hook re-applies eval mode because the training loop calls
    ``model.train()``; hooks rather than swapped modules keep the module tree and state dict
    of the plain model. On exit the hooks are removed and the parameters are trainable again.
    """
    layers = batchnorm_layers(model) if enabled else []
    handles, params = [], []
    for bn in layers:
        handles.append(bn.register_forward_pre_hook(_keep_eval))
        for p in (bn.weight, bn.bias):
            if p is not None and p.requires_grad:
                p.requires_grad_(False)
                params.append(p)
    try:
        yield len(layers)
    finally:
        for h in handles:
            h.remove()
        for p in params:
            p.requires_grad_(True)
