"""The CUDA paths of scale-out: NCCL ranks, SyncBatchNorm, per-GPU timing locks.

Skipped without CUDA (and the two-rank tests without two GPUs). None of these ran on the
CPU-only project machine; see docs/scale_out.md for what was run where.
"""

from __future__ import annotations

import pytest
import torch
from ddp_toys import train_toy

from benchmark.device import Device
from benchmark.distributed import Ranks, run_ranks
from benchmark.recipe import TrainingRecipe
from benchmark.train import CHECKPOINT_FILE, load_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")


@two_gpus
@pytest.mark.parametrize("bn", ["sync", "frozen"])
def test_two_nccl_ranks_equal_one_process_on_the_full_batch(tmp_path, bn):
    """With SyncBatchNorm, two half batches normalize with the full batch's statistics."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    cuda = Device.from_spec("cuda")
    train_toy(Ranks(0, 1, cuda.for_rank(0)), 4, str(one), 2, bn)
    run_ranks(train_toy, 2, cuda, 2, str(two), 2, bn)
    w1 = load_checkpoint(one / CHECKPOINT_FILE)["model"]
    w2 = load_checkpoint(two / CHECKPOINT_FILE)["model"]
    assert set(w1) == set(w2)
    for k in w1:
        torch.testing.assert_close(w2[k].float(), w1[k].float(), rtol=1e-4, atol=1e-5, msg=k)


def test_cuda_device_scale_out_properties():
    cuda = Device.from_spec("cuda")
    assert cuda.dist_backend == "nccl" and cuda.supports_sync_batchnorm
    assert cuda.lock_key.startswith("cuda-") and cuda.device_count() >= 1
    assert cuda.for_rank(0).torch_device == torch.device("cuda", 0)


def test_more_devices_than_gpus_is_an_error():
    from omegaconf import OmegaConf

    n = torch.cuda.device_count() + 1
    tcfg = OmegaConf.create(
        {"batch_size": 2, "warmup_iters": 0, "optimizer": {"lr": 0.1}, "devices": n}
    )
    with pytest.raises(ValueError, match="CUDA device"):
        TrainingRecipe.from_cfg(tcfg).check(Device.from_spec("cuda"))
