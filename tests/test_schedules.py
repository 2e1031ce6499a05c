"""Hand-computed values of the learning-rate schedules (``benchmark.train.lr_factor``) and of
the second stage's crop max-pool (``crop_max_pool``, on in every two-stage detector)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.train import lr_factor
from models.heads.box_classifier import crop_max_pool


def _f(it, schedule="constant", *, max_iters=110, warmup_iters=10, warmup_factor=0.1, **kw):
    return lr_factor(
        it,
        max_iters=max_iters,
        warmup_iters=warmup_iters,
        warmup_factor=warmup_factor,
        schedule=schedule,
        **kw,
    )


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_linear_warm_up_from_the_factor_to_one(schedule):
    # factor * (1 - it / W) + it / W: 0.1 at 0, halfway (0.55) at 5, 0.91 at 9.
    assert _f(0, schedule) == pytest.approx(0.1)
    assert _f(5, schedule) == pytest.approx(0.55)
    assert _f(9, schedule) == pytest.approx(0.91)


def test_constant_after_warm_up():
    assert [_f(it) for it in (10, 50, 110, 500)] == [1.0] * 4
    assert _f(0, warmup_iters=0) == 1.0  # no warm-up: the schedule from the first step


def test_cosine_decays_to_zero_over_the_iterations_after_warm_up():
    # Progress p = (it - 10) / 100; factor = (1 + cos(pi p)) / 2.
    assert _f(10, "cosine") == pytest.approx(1.0)
    assert _f(35, "cosine") == pytest.approx((1 + math.sqrt(0.5)) / 2)  # p = 1/4
    assert _f(60, "cosine") == pytest.approx(0.5)  # p = 1/2
    assert _f(85, "cosine") == pytest.approx((1 - math.sqrt(0.5)) / 2)  # p = 3/4
    assert _f(110, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert _f(200, "cosine") == pytest.approx(0.0, abs=1e-12)  # stays at 0 past the end


def test_step_drops_tenfold_at_two_thirds_and_eight_ninths():
    # The paper's 10x drops at 67 % and 89 % of the run (max_iters 100: at 67 and 89).
    f = {it: _f(it, "step", max_iters=100, warmup_iters=0) for it in (0, 66, 67, 88, 89, 99)}
    assert f[0] == f[66] == 1.0
    assert f[67] == pytest.approx(0.1) and f[88] == pytest.approx(0.1)
    assert f[89] == pytest.approx(0.01) and f[99] == pytest.approx(0.01)
    assert _f(50, "step", max_iters=100, warmup_iters=0, steps=(0.5,), gamma=0.5) == 0.5


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        _f(50, "linear")


def test_crop_max_pool_hand_computed():
    # A 5x5 crop, k = 2: floor mode keeps the 2x2 windows of the top-left 4x4 and ignores
    # the last row and column (which hold the largest values here).
    x = torch.tensor(
        [
            [1, 9, 2, 0, 99],
            [3, 4, 8, 5, 99],
            [7, 0, 1, 1, 99],
            [2, 6, 3, 2, 99],
            [99, 99, 99, 99, 99],
        ],
        dtype=torch.float32,
    )[None, None]
    assert crop_max_pool(x, 2).tolist() == [[[[9.0, 8.0], [7.0, 3.0]]]]
    # k = 3 on the same crop: one window, the top-left 3x3.
    assert crop_max_pool(x, 3).tolist() == [[[[9.0]]]]


def test_crop_max_pool_equals_max_pool2d_with_and_without_autograd():
    torch.manual_seed(0)
    crops = torch.randn(6, 16, 14, 14)
    expected = F.max_pool2d(crops, 2, 2)
    assert torch.equal(crop_max_pool(crops, 2), expected)  # the fast path, exact
    assert torch.equal(
        crop_max_pool(crops[..., :13, :13], 2), F.max_pool2d(crops[..., :13, :13], 2)
    )
    trained = crops.clone().requires_grad_(True)
    out = crop_max_pool(trained, 2)
    assert torch.equal(out.detach(), expected)
    out.sum().backward()  # gradient: 1 at the argmax of every window, 0 elsewhere
    assert trained.grad.sum().item() == expected.numel()
