"""A tiny BN-carrying "detector" and a rank function for the data-parallel tests.

Lives in its own module (not a test file) because spawned ranks import it by name.
The model follows the torchvision convention the training loop expects: ``model(images,
targets)`` returns a dict of scalar losses, each a mean over the images of the batch, so the
average of two ranks' half-batch losses is the full-batch loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from benchmark.data import collate
from benchmark.device import Device
from benchmark.distributed import Ranks
from benchmark.recipe import frozen_batchnorm
from benchmark.train import train


class ToyDetector(nn.Module):
    """conv -> BatchNorm -> ReLU -> pool -> linear; MSE against ``target["y"]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 1)

    def forward(self, images, targets=None):
        x = torch.relu(self.bn(self.conv(torch.stack(images))))
        pred = self.head(x.mean((2, 3))).squeeze(1)
        y = torch.stack([t["y"] for t in targets])
        return {"loss_mse": ((pred - y) ** 2).mean(), "loss_l1": (pred - y).abs().mean()}


def toy_dataset(n: int = 4, size: int = 8) -> list:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.rand(3, size, size, generator=g), {"y": torch.rand((), generator=g)})
        for _ in range(n)
    ]


def toy_model() -> ToyDetector:
    torch.manual_seed(0)
    model = ToyDetector()
    # Non-trivial running statistics, so frozen BN is not the identity.
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model


def toy_train_cfg(max_iters: int = 2):
    return OmegaConf.create(
        {
            "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9},
            "max_iters": max_iters,
            "warmup_iters": 0,
            "warmup_factor": 1.0,
            "schedule": "constant",
            "grad_clip": 0.0,
            "log_every": 1,
            "resume": False,
        }
    )


def train_toy(
    ranks: Ranks, batch_per_rank: int, out_dir: str, max_iters: int, bn: str = "frozen"
) -> None:
    """Train the toy on this rank's shard; rank 0 writes the checkpoint and the history.

    ``bn``: ``frozen`` (running statistics; equal to one process on any device) or ``sync``
    (SyncBatchNorm across ranks, CUDA only; one process trains plain BN on the full batch).
    """
    device = ranks.device or Device.from_spec("cpu")
    model = toy_model().to(device.torch_device)
    dataset = [
        (x.to(device.torch_device), {"y": t["y"].to(device.torch_device)}) for x, t in toy_dataset()
    ]
    if bn == "sync" and ranks.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    with frozen_batchnorm(model, bn == "frozen"):
        net = model
        if ranks.world_size > 1:
            ids = [device.torch_device.index] if device.is_cuda else None
            net = DistributedDataParallel(model, device_ids=ids)
        sampler = (
            DistributedSampler(dataset, ranks.world_size, ranks.rank, shuffle=False)
            if ranks.world_size > 1
            else None
        )
        loader = DataLoader(
            dataset, batch_size=batch_per_rank, sampler=sampler, shuffle=False, collate_fn=collate
        )
        tr = train(net, loader, toy_train_cfg(max_iters), device, Path(out_dir), ranks=ranks)
    if ranks.is_main:
        (Path(out_dir) / "history.json").write_text(json.dumps(tr.history))
