"""Tiny real jobs for the job-runner tests (identity, resume, force, divergence, settings).

A module, not a test file: subprocesses and Hydra's ``_target_`` import it by name
(``tests/`` is on ``sys.path`` under pytest; subprocesses get it through ``PYTHONPATH``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
# SSD over MobileNetV3-Small on 8 + 4 synthetic images of 64 px, batch 2, one thread,
# measurement off: a whole job (build, 2 steps, COCO evaluation) takes seconds on CPU.
TINY = [
    "meta_arch=ssd",
    "extractor=mobilenet_v3_small",
    "data=synthetic",
    "data.num_train=8",
    "data.num_val=4",
    "data.gen_size=64",
    "data.image_size=64",
    "train.batch_size=2",
    "train.max_iters=2",
    "train.log_every=1",
    "train.warmup_iters=0",
    "progress=false",
    "num_threads=1",
    "timing_lock=false",  # no wait on other jobs of this machine: nothing is timed
    *(
        f"bench.enabled.{k}=false"
        for k in ("latency", "throughput", "flops", "memory", "train_memory", "roofline")
    ),
]


def tiny_cfg(data_root: Path, *overrides: str) -> DictConfig:
    """The tiny job's config (``overrides`` last), data generated under ``data_root``."""
    overrides = [*TINY, f"data.root={data_root}", *overrides]
    if GlobalHydra.instance().is_initialized():  # inside a test module's initialize
        return compose("config", overrides=overrides)
    with initialize_config_module("sweeps", version_base="1.3"):
        return compose("config", overrides=overrides)


class NaNAtStep(torch.optim.SGD):
    """SGD whose ``nan_at``-th step (1-based) leaves one weight NaN, as a gradient spike on the
    last step does: no loss is computed after it, so only the weights can show it."""

    def __init__(self, params, lr: float, nan_at: int) -> None:
        super().__init__(params, lr=lr)
        self.nan_at = nan_at
        self.steps = 0

    @torch.no_grad()
    def step(self, closure=None):
        out = super().step(closure)
        self.steps += 1
        if self.steps == self.nan_at:
            self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out


NAN_OPTIMIZER = "job_toys.NaNAtStep"  # tests/ is on sys.path under pytest
