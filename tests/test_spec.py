"""The job's typed hand-off (benchmark/spec.py): one input spec for data, anchors and the
memory probes; a picklable recipe that rebuilds the configured detector and its optimizer."""

from __future__ import annotations

import pickle

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from benchmark.data import build_data
from benchmark.spec import InputSpec, ModelRecipe, OptimizerSpec


def _compose(overrides: list[str]):
    with initialize_config_module("sweeps", version_base="1.3"):
        return compose("config", overrides=overrides)


def test_resized_is_what_the_data_pipeline_gives(tiny_coco):
    spec = InputSpec("shorter_side", 96, 112)
    data = build_data(tiny_coco, resize_mode=spec.resize_mode, image_size=96, max_size=112)
    for i, rec in enumerate(data.val.records):
        image, _ = data.val[i]
        assert spec.resized(rec.height, rec.width) == tuple(image.shape[-2:])
    # The portrait 48 x 64 (w x h) image: shorter side 96 would make it 128 high, over the
    # cap, so the longer side becomes 112 and the shorter 112 * 48 / 64 = 84.
    assert spec.resized(64, 48) == (112, 84)


def test_typical_shape_keeps_the_aspect_ratio():
    # Three landscape 640 x 480 photos, one portrait, one square, at M = 600 (cap 1024):
    # (600, 800) x 3 and (800, 600) have area 480000, (600, 600) 360000; the upper median of
    # the five, ordered by area then (H, W), is the third: (600, 800).
    sizes = [(480, 640)] * 3 + [(640, 480), (500, 500)]
    assert InputSpec("shorter_side", 600).with_typical_shape(sizes).shape == (600, 800)
    assert InputSpec("square", 600).with_typical_shape(sizes).shape == (600, 600)
    assert InputSpec("shorter_side", 600).shape == (600, 600)  # until the data is known
    assert InputSpec("shorter_side", 600).with_typical_shape([]).shape == (600, 600)
    with pytest.raises(ValueError, match="resize_mode"):
        InputSpec("letterbox", 600)


def test_input_spec_from_the_config_follows_the_model_family():
    spec = InputSpec.from_cfg(_compose(["meta_arch=faster_rcnn", "data.image_size=96"]))
    assert (spec.resize_mode, spec.image_size, spec.max_size) == ("shorter_side", 96, None)
    assert InputSpec.from_cfg(_compose(["meta_arch=ssd"])).resize_mode == "square"


def test_recipe_survives_pickling_and_builds_the_configured_detector():
    """The recipe's resolved nodes build what ``instantiate`` builds from the config tree
    (interpolations such as ``image_size: ${data.image_size}`` resolved on the way)."""
    cfg = _compose(
        ["meta_arch=faster_rcnn", "extractor=resnet18", "data.image_size=96", "train.batch_size=4"]
    )
    recipe = pickle.loads(pickle.dumps(ModelRecipe.from_cfg(cfg, num_classes=3)))
    torch.manual_seed(0)
    built = recipe.build()
    torch.manual_seed(0)
    expected = instantiate(cfg.meta_arch, extractor=instantiate(cfg.extractor), num_classes=3)
    assert type(built) is type(expected) and built.num_classes == 3
    assert built.rpn.anchor_sizes == expected.rpn.anchor_sizes  # 256 * 96 / 600 per scale
    state, ref = built.state_dict(), expected.state_dict()
    assert state.keys() == ref.keys()
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    assert recipe.train_batch_size == 4 and recipe.train_precision == "fp32"


def test_optimizer_spec_is_the_configured_optimizer():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = OptimizerSpec.from_cfg(_compose(["train/optimizer=sgd"]).train.optimizer).build(params)
    # sweeps/train/optimizer/sgd.yaml: lr 0.02, momentum 0.9, weight decay 4e-5.
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["lr"] == 0.02 and sgd.defaults["momentum"] == 0.9
    assert sgd.defaults["weight_decay"] == 4.0e-5
    default = OptimizerSpec.from_cfg(None).build(params)
    assert type(default) is torch.optim.SGD and default.defaults["lr"] == 1e-3


def test_amp_precision_only_on_cuda():
    cfg = _compose(["train.amp=true", "train.amp_dtype=bf16"])
    assert ModelRecipe.from_cfg(cfg, 2).train_precision == "fp32"  # AMP is ignored on CPU
    assert ModelRecipe.from_cfg(cfg, 2, cuda=True).train_precision == "bf16"


def test_shorter_side_job_counts_anchors_at_the_real_shape(tmp_path):
    """A profile-only Faster R-CNN job on landscape images: input_shape is the resized
    validation image, and num_anchors is counted there, not at M x M."""
    import benchmark.app  # noqa: F401  (registers the config's resolvers)
    from benchmark.job import run_job

    cfg = _compose(
        [
            "meta_arch=faster_rcnn",
            "extractor=resnet18",
            "data=synthetic",
            f"data.root={tmp_path / 'data'}",
            "data.num_train=2",
            "data.num_val=3",
            "data.aspect_ratios=[1.3333]",  # every image 213 x 160 (w x h)
            "data.image_size=64",
            "train.max_iters=0",
            "progress=false",
            "timing_lock=false",
            "bench.enabled.latency=false",
            "bench.enabled.throughput=false",
            "bench.enabled.flops=false",
            "bench.enabled.memory=false",
            "bench.enabled.roofline=false",
        ]
    )
    result = run_job(cfg, tmp_path / "job", progress=False)
    assert result["status"] == "ok", result["error"]
    # 160 x 213 -> shorter side 64: 64 x round-down(213 * 0.4) = 64 x 85 (cap 109 not hit).
    assert result["resize_mode"] == "shorter_side" and result["input_shape"] == [64, 85]
    # ResNet-18 at stride 16, padded to 16: 64 x 96 -> a 4 x 6 RPN map, 12 anchors per cell
    # (4 scales x 3 ratios) = 288; at 64 x 64 it would be 4 x 4 x 12 = 192.
    assert result["num_anchors"] == 288
