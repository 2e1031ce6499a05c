"""``train.channels_last``: training in NHWC is the same training (same weights after the same
steps, up to float rounding), and the model leaves it NCHW, as evaluation and timing expect."""

from __future__ import annotations

import torch
from ddp_toys import toy_dataset, toy_model
from omegaconf import OmegaConf

from benchmark.device import Device
from benchmark.train import training_memory_format
from benchmark.train_parallel import fit

CPU = Device.from_spec("cpu")


def _cfg(channels_last: bool):
    return OmegaConf.create(
        {
            "seed": 0,
            "timing_lock": False,
            "data": {"num_workers": 0},
            "train": {
                "max_iters": 3,
                "batch_size": 2,
                "schedule": "constant",
                "warmup_iters": 0,
                "warmup_factor": 1.0,
                "grad_clip": 0.0,
                "resume": False,
                "channels_last": channels_last,
                "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1},
                "devices": 1,
                "sync_bn": "off",
                "lr_scaling": "linear",
                "reference_batch_size": None,
            },
        }
    )


def test_weights_are_nhwc_inside_and_nchw_after():
    model = toy_model()
    with training_memory_format(model, True):
        assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert not model.conv.weight.is_contiguous()
    assert model.conv.weight.is_contiguous()
    with training_memory_format(model, False):
        assert model.conv.weight.is_contiguous()


def test_channels_last_training_is_the_same_training(tmp_path):
    trained = {}
    for channels_last in (False, True):
        model = toy_model()
        out = tmp_path / str(channels_last)
        out.mkdir()
        torch.manual_seed(0)  # the loader's shuffling and the model's dropout-free forward
        tr, _ = fit(_cfg(channels_last), model, toy_dataset(), 1, CPU, out, progress=False)
        assert tr.iters == 3
        assert model.conv.weight.is_contiguous()  # NCHW again for evaluation and timing
        trained[channels_last] = {k: v.clone() for k, v in model.state_dict().items()}
    # Three SGD steps at lr 0.1 moved the weights, so the comparison below means something.
    assert not torch.equal(trained[False]["conv.weight"], toy_model().conv.weight)
    for key, value in trained[False].items():
        torch.testing.assert_close(trained[True][key], value, rtol=1e-4, atol=1e-5)
