"""MegDet's recipe (benchmark/recipe.py): linear scaling rule, gradual warm-up (Goyal et al.)
from the small-batch rate to the scaled one, the schedule that follows, BN modes."""

from __future__ import annotations

import pytest
import torch
from ddp_toys import toy_model
from omegaconf import OmegaConf

from benchmark.device import Device
from benchmark.recipe import Scaled, TrainingRecipe, frozen_batchnorm, linear_scaling
from benchmark.train import lr_factor, schedule_factor

CPU = Device.from_spec("cpu")


def _tcfg(**kw):
    base = {
        "batch_size": 2,
        "warmup_iters": 30,
        "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.02},
        "devices": 1,
        "sync_bn": "off",
        "lr_scaling": "linear",
        "reference_batch_size": None,
    }
    return OmegaConf.create({**base, **kw})


@pytest.mark.parametrize(
    ("total", "ref", "lr", "warmup"),
    [
        (16, 16, 0.02, 100),  # the reference batch: unchanged
        (256, 16, 0.32, 100),  # MegDet: 16x the batch, 16x lr (0.02 -> 0.32), same warm-up
        (8, 16, 0.01, 100),  # smaller batch: lr scaled down too
    ],
)
def test_linear_scaling(total, ref, lr, warmup):
    s = linear_scaling(0.02, 100, total_batch=total, reference_batch=ref)
    assert s.lr == pytest.approx(lr) and s.warmup_iters == warmup
    assert s.factor == pytest.approx(total / ref)


def test_linear_scaling_never_lengthens_the_warmup_and_rejects_bad_input():
    assert linear_scaling(0.1, 3, total_batch=3, reference_batch=2).warmup_iters == 3
    assert linear_scaling(0.1, 0, total_batch=64, reference_batch=2).warmup_iters == 0
    with pytest.raises(ValueError, match="batch"):
        linear_scaling(0.1, 10, total_batch=0, reference_batch=16)
    with pytest.raises(ValueError, match="warm-up"):
        linear_scaling(0.1, -1, total_batch=16, reference_batch=16)


def test_one_device_default_trains_as_written():
    tcfg = _tcfg()
    r = TrainingRecipe.from_cfg(tcfg)
    assert r.scaled == Scaled(1.0, 0.02, 30)
    assert r.train_cfg(tcfg) is tcfg  # the single-process path gets its own config back
    keys = r.result_keys(CPU)
    assert keys["world_size"] == 1 and keys["dist_backend"] is None
    assert keys["total_batch_size"] == 2 and keys["effective_lr"] == 0.02


def test_devices_multiply_lr_and_warmup_from_one_rank_reference():
    tcfg = _tcfg(devices=4)
    r = TrainingRecipe.from_cfg(tcfg)
    out = r.train_cfg(tcfg)
    assert out.optimizer.lr == pytest.approx(0.08) and out.warmup_iters == 30
    assert out.lr_scale == 4.0  # lr_factor ramps from 1/4 of the scaled rate
    assert tcfg.optimizer.lr == 0.02  # the job's config is not modified
    keys = r.result_keys(CPU)
    assert keys["world_size"] == 4 and keys["total_batch_size"] == 8
    assert keys["effective_lr"] == pytest.approx(0.08) and keys["dist_backend"] == "gloo"


def test_explicit_reference_and_no_scaling():
    ref = TrainingRecipe.from_cfg(_tcfg(batch_size=4, reference_batch_size=16))
    assert ref.scaled.lr == pytest.approx(0.005)  # one device, a quarter of the reference
    assert TrainingRecipe.from_cfg(_tcfg(devices=8, lr_scaling="none")).scaled.factor == 1.0


def test_bn_modes_and_their_errors():
    # YAML 1.1 reads an unquoted off as false.
    assert TrainingRecipe.from_cfg(_tcfg(sync_bn=False)).sync_bn == "off"
    with pytest.raises(ValueError, match="sync_bn"):
        TrainingRecipe.from_cfg(_tcfg(sync_bn="cross"))
    with pytest.raises(ValueError, match="lr_scaling"):
        TrainingRecipe.from_cfg(_tcfg(lr_scaling="sqrt"))
    with pytest.raises(ValueError, match="devices"):
        TrainingRecipe.from_cfg(_tcfg(devices=0))
    # sync on several CPU ranks: a clear error, never a silent fallback.
    with pytest.raises(ValueError, match="SyncBatchNorm has no CPU"):
        TrainingRecipe.from_cfg(_tcfg(devices=2, sync_bn="sync")).check(CPU)
    one = TrainingRecipe.from_cfg(_tcfg(sync_bn="sync"))
    one.check(CPU)  # one rank: nothing to synchronize
    assert one.bn_effective == "off"
    TrainingRecipe.from_cfg(_tcfg(devices=2, sync_bn="frozen")).check(CPU)


def test_frozen_batchnorm_keeps_statistics_and_module_tree():
    model = toy_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with frozen_batchnorm(model) as n:
        assert n == 1
        model.train()
        assert not model.bn.weight.requires_grad
        x = [torch.rand(3, 8, 8) for _ in range(2)]
        loss = sum(model(x, [{"y": torch.tensor(0.0)}] * 2).values())
        loss.backward()
        assert not model.bn.training and model.bn.weight.grad is None
    assert torch.equal(model.bn.running_mean, before["bn.running_mean"])
    assert int(model.bn.num_batches_tracked) == 0
    assert model.bn.weight.requires_grad and not model.bn._forward_pre_hooks
    assert set(model.state_dict()) == set(before)  # checkpoints stay interchangeable
    model.train()
    model([torch.rand(3, 8, 8)] * 2, [{"y": torch.tensor(0.0)}] * 2)
    assert int(model.bn.num_batches_tracked) == 1  # plain BN again after the block


def test_fit_refuses_sync_bn_on_cpu_ranks_before_starting_them(tmp_path):
    from benchmark.train_parallel import fit

    cfg = OmegaConf.create({"train": _tcfg(devices=2, sync_bn="sync")})
    with pytest.raises(ValueError, match="sync_bn=sync needs CUDA"):
        fit(cfg, toy_model(), [], 1, CPU, tmp_path)  # raises before any process or loader


def _lrs(devices: int, **train):
    """The learning rate of every step of a job on ``devices`` ranks, as the training loop
    computes it: the recipe's scaled config, then its schedule."""
    tcfg = _tcfg(devices=devices, max_iters=300, warmup_factor=0.01, schedule="cosine", **train)
    scaled = TrainingRecipe.from_cfg(tcfg).train_cfg(tcfg)
    factor = schedule_factor(scaled)
    return [float(scaled.optimizer.lr) * factor(it) for it in range(301)]


@pytest.mark.parametrize("devices", range(1, 17))
def test_warmup_reaches_the_scaled_rate_on_time_and_the_decay_runs(devices):
    """Goyal et al. / MegDet: start at the small-batch rate, climb linearly to k x lr, within
    the same 30 warm-up steps at every device count; then the cosine decay to 0."""
    lr, k, base = _lrs(devices), devices, 0.02
    single = _lrs(1)
    assert lr[0] == pytest.approx(single[0]) == pytest.approx(0.01 * base)  # small-batch start
    assert all(a < b for a, b in zip(lr[:31], lr[1:31], strict=False))  # climbs every step
    assert lr[30] == pytest.approx(k * base)  # the target, at step 30 whatever k
    assert max(lr) == pytest.approx(k * base)  # never above it
    assert all(a >= b for a, b in zip(lr[30:], lr[31:], strict=False))  # then decays...
    assert lr[165] == pytest.approx(k * base / 2, rel=0.02) and lr[300] == pytest.approx(0.0)
    if k == 1:
        assert lr == single


def test_stepped_warmup_and_exponential_decay():
    """Huang et al.'s SSD over VGG-16: 0.8^2 then 0.8 of the rate for 10K steps each; their
    other SSDs decay by 0.95 every 800K steps (staircase)."""
    f = [
        lr_factor(
            it,
            max_iters=2_000_000,
            warmup_iters=20_000,
            warmup_factor=0.01,
            warmup_factors=[0.64, 0.8],
            schedule="exponential",
            decay_steps=800_000,
        )
        for it in (0, 9_999, 10_000, 19_999, 20_000, 799_999, 800_000, 1_600_000)
    ]
    assert f == pytest.approx([0.64, 0.64, 0.8, 0.8, 1.0, 1.0, 0.95, 0.95**2])
    # Under linear scaling (k = 4) the stepped warm-up starts at the small-batch rate too.
    assert lr_factor(
        0,
        max_iters=100,
        warmup_iters=20,
        warmup_factor=1.0,
        warmup_factors=[0.64, 0.8],
        schedule="constant",
        scale=4.0,
    ) == pytest.approx(0.64 / 4)
    with pytest.raises(ValueError, match="decay_steps"):
        schedule_factor(_tcfg(max_iters=10, warmup_factor=0.1, schedule="exponential"))
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_factor(_tcfg(max_iters=10, warmup_factor=0.1, schedule="poly"))
