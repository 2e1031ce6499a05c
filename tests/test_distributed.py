"""Data-parallel training inside a job (benchmark/distributed.py), on CPU with gloo.

The equivalence test: two ranks with half the batch each take the same optimizer steps as
one process with the full batch. The toy model has a BatchNorm layer and trains it in
``frozen`` mode: per-rank ``off`` BN would normalize with each half's statistics (not the
full batch's), and ``sync`` (SyncBatchNorm) has no CPU implementation in PyTorch, so frozen
BN is what makes the two computations equal on CPU. SyncBatchNorm is covered on CUDA by
tests/test_distributed_gpu.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from ddp_toys import ToyDetector, toy_model, train_toy

from benchmark.device import Device
from benchmark.distributed import SINGLE, Ranks, free_port, run_ranks, threads_per_rank
from benchmark.train import CHECKPOINT_FILE, load_checkpoint


@pytest.mark.slow  # end to end: two spawned ranks train and checkpoint
def test_two_gloo_ranks_step_equals_one_process_on_the_full_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    train_toy(SINGLE, 4, str(one), 2)  # full batch of 4, in this process
    run_ranks(train_toy, 2, Device.from_spec("cpu"), 2, str(two), 2, num_threads=2)

    w1 = load_checkpoint(one / CHECKPOINT_FILE)["model"]
    w2 = load_checkpoint(two / CHECKPOINT_FILE)["model"]  # written by rank 0 alone
    assert set(w1) == set(w2) and "module.conv.weight" not in w2  # DDP prefix stripped
    start = toy_model().state_dict()
    assert not torch.allclose(w1["conv.weight"], start["conv.weight"])  # it did train
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6, msg=k)
    # Frozen BN: running statistics and affine parameters untouched in both runs.
    for k in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        torch.testing.assert_close(w2[k], start[k])
    # Logged losses are averaged over ranks: they equal the full-batch losses.
    h1 = json.loads((one / "history.json").read_text())
    h2 = json.loads((two / "history.json").read_text())
    assert [e["iter"] for e in h2] == [1, 2]
    for a, b in zip(h1, h2, strict=True):
        for key in ("loss", "loss_mse", "loss_l1", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key


def test_single_process_context():
    assert SINGLE.is_main and SINGLE.world_size == 1
    assert SINGLE.mean({"a": 1.5, "b": 2.0}) == {"a": 1.5, "b": 2.0}
    model = ToyDetector()
    assert Ranks.unwrap(model) is model


def test_helpers():
    assert 1024 <= free_port() < 65536
    assert (
        threads_per_rank(2, 2) == 1 and threads_per_rank(4, 2) == 1 and threads_per_rank(1, 8) == 8
    )


def test_cpu_device_distributed_properties():
    cpu = Device.from_spec("cpu")
    assert cpu.dist_backend == "gloo" and cpu.device_count() == 1
    assert cpu.for_rank(1) is cpu and cpu.lock_key == "cpu"
    assert not cpu.supports_sync_batchnorm
