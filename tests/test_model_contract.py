"""Contract of every ``sweeps/meta_arch`` option with every ``sweeps/neck`` option (and none).

The expectations come from the models' own metadata (``DetectionModel.class_info``/``info``),
not from tables in this file: a detector that takes a context module must build with each
neck, run, and report that neck; one that takes none must refuse a neck choice as an
incompatible (skipped) configuration; what a detector says about itself must agree with what
it is (proposals, family), with what its config alone says (the report's fallback for older
results), and must be what the report's table shows.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import get_class
from measure_toys import one_thread  # noqa: F401 (fixture: one intra-op thread)
from omegaconf import OmegaConf

import benchmark.app  # noqa: F401  (registers the resolvers the config uses)
import sweeps
from benchmark.build import build_detector
from benchmark.report.table import results_table
from models.errors import IncompatibleConfigError
from models.meta_arch.base import FAMILIES, import_object
from models.meta_arch.torchvision_ref import TorchvisionDetector, builder_info

SWEEPS = Path(sweeps.__file__).parent
META_ARCHS = sorted(p.stem for p in (SWEEPS / "meta_arch").glob("*.yaml"))
NECKS = [None, *sorted(p.stem for p in (SWEEPS / "neck").glob("*.yaml"))]
SIDE = 64


@pytest.fixture(scope="module", autouse=True)
def hydra_sweeps():
    with initialize_config_module("sweeps", version_base="1.3"):
        yield


def _compose(meta_arch: str, neck: str | None, *extra: str):
    overrides = [f"meta_arch={meta_arch}", "extractor=mobilenet_v3_small"]
    overrides += [f"neck={neck}"] if neck else []
    return compose("config", overrides=[*overrides, f"data.image_size={SIDE}", *extra])


def _table_row(info_keys: dict, meta_arch: str) -> dict:
    record = {"status": "ok", "meta_arch": meta_arch, "extractor": "mobilenet_v3_small"}
    return results_table([{**record, "image_size": SIDE, **info_keys}]).iloc[0].to_dict()


@pytest.mark.parametrize("neck", NECKS, ids=str)
@pytest.mark.parametrize("meta_arch", META_ARCHS)
def test_meta_arch_with_neck(meta_arch, neck):
    cfg = _compose(meta_arch, neck)
    cls = get_class(cfg.meta_arch._target_)
    declared = cls.class_info()
    if neck is not None and not declared.takes_neck:
        with pytest.raises(IncompatibleConfigError, match="does not apply"):
            build_detector(cfg, num_classes=3)
        return

    torch.manual_seed(0)
    model = build_detector(cfg, num_classes=3).eval()
    info = model.info()
    assert info.family in FAMILIES and info.resize_mode == cls.resize_mode
    assert info.takes_neck == declared.takes_neck and info.display_name
    # Proposals: declared exactly when the detector has a number of them.
    has_proposals = isinstance(getattr(model, "num_proposals", None), int)
    assert info.proposals == has_proposals
    assert info.num_proposals == (model.num_proposals if has_proposals else None)
    assert info.family == ("two-stage" if info.proposals else "single-shot")
    # The neck the model reports is the module it runs, as the neck config chose it.
    if info.takes_neck:
        top_down = cfg.meta_arch.get("top_down")
        if top_down is not None:
            module = import_object(top_down._target_)
            assert isinstance(model.top_down, module) and info.neck == module.neck_name
        elif "top_down" in cfg.meta_arch:
            assert model.top_down is None
            assert info.neck == ("ssd_extra" if len(model.neck.extras) else "none")
    else:
        assert info.neck is None
    # What the config alone says (the report's fallback for results without these keys).
    resolved = OmegaConf.to_container(cfg.meta_arch, resolve=True)
    assert cls.config_info(resolved) == info
    # It runs, and the report shows what the model said.
    with torch.inference_mode():
        detections = model([torch.rand(3, SIDE, SIDE)])
    assert detections[0]["boxes"].shape[-1] == 4
    row = _table_row(info.result_keys(), meta_arch)
    assert row["family"] == info.family and row["meta_arch_name"] == info.display_name
    assert ("prop." in row["label"]) == info.proposals
    assert row["label"].startswith(f"{info.display_name} w/ ")


@pytest.mark.parametrize(
    ("builder", "family", "name"),
    [  # torchvision's detection models: R-CNN is two-stage, the dense ones single-shot
        ("fasterrcnn_mobilenet_v3_large_320_fpn", "two-stage", "Faster R-CNN (torchvision)"),
        ("ssdlite320_mobilenet_v3_large", "single-shot", "SSDlite (torchvision)"),
    ],
)
def test_torchvision_reports_the_family_of_the_detector_it_wraps(builder, family, name):
    cfg = _compose("torchvision", None, f"meta_arch.name={builder}")
    torch.manual_seed(0)
    model = build_detector(cfg, num_classes=3)
    info = model.info()
    assert (info.family, info.display_name) == (family, name)
    assert info.proposals == (family == "two-stage")
    if info.proposals:  # the RPN's test-time proposals of the 320 model (torchvision: 150)
        assert info.num_proposals == model.model.rpn._post_nms_top_n["testing"] == 150
    row = _table_row(info.result_keys(), "torchvision")
    assert row["family"] == family and row["label"].startswith(name)


@pytest.mark.parametrize(
    ("builder", "family"),
    [
        ("fasterrcnn_resnet50_fpn_v2", "two-stage"),
        ("retinanet_resnet50_fpn", "single-shot"),
        ("fcos_resnet50_fpn", "single-shot"),
        ("ssd300_vgg16", "single-shot"),
    ],
)
def test_torchvision_family_without_building(builder, family):
    """Old results of ``meta_arch=torchvision``: the family from the builder alone."""
    assert builder_info(builder).family == family
    assert TorchvisionDetector.config_info({"name": builder}).family == family
    with pytest.raises(IncompatibleConfigError, match="mask/keypoint"):
        builder_info("maskrcnn_resnet50_fpn")


def test_results_written_before_jobs_recorded_metadata_still_load(tmp_path):
    """Results that predate the model keys (results/example with them removed): names,
    families, necks and proposals come from the model classes and configs they name."""
    import json
    import shutil

    from benchmark.report import load_results

    example = tmp_path / "example"
    shutil.copytree(SWEEPS.parent / "results" / "example", example)
    model_keys = ("family", "meta_arch_name", "neck", "num_proposals", "uses_proposals")
    configured = {}  # job -> meta_arch.num_proposals of its stored config
    for path in example.glob("*/result.json"):
        result = json.loads(path.read_text())
        configured[path.parent.name] = result["config"]["meta_arch"].get("num_proposals")
        path.write_text(json.dumps({k: v for k, v in result.items() if k not in model_keys}))
    df = load_results(example).set_index("job")
    assert len(df) == 10 and (df["status"] == "ok").all()
    expected = {  # meta_arch option -> (family, display name, neck) of sweeps/meta_arch/*.yaml
        "ssd": ("single-shot", "SSD", "ssd_extra"),
        "dssd": ("single-shot", "DSSD", "dssd"),
        "refinedet": ("single-shot", "RefineDet", "tcb"),
        "faster_rcnn": ("two-stage", "Faster R-CNN", None),
        "rfcn": ("two-stage", "R-FCN", None),
    }
    for job, row in df.iterrows():
        family, name, neck = expected[row["meta_arch"]]
        assert (row["family"], row["meta_arch_name"]) == (family, name)
        assert (row["neck"] == neck) if neck else pd.isna(row["neck"])
        proposals = row["num_proposals"]
        assert (proposals == configured[job]) if family == "two-stage" else pd.isna(proposals)
        assert row["label"].startswith(f"{name} w/ MobileNet")
