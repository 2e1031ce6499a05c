"""Fake sweep folders for the report tests: plausible result.json files, no training.

The numbers follow the paper's qualitative picture (bigger extractors are slower and more
accurate, two-stage detectors gain from proposals, higher resolution helps small objects),
so the figures drawn from them look like the real thing and can be inspected by eye.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from models.meta_arch.base import import_object

EXTRACTORS = {  # name -> (relative cost, accuracy factor)
    "mobilenet_v1": (1.0, 0.78),
    "inception_v3": (3.2, 0.92),
    "resnet101": (4.5, 0.95),
    "inception_resnet_v2": (9.0, 1.05),
}
META = {
    "ssd": (1.0, 0.70),
    "dssd": (1.6, 0.78),
    "refinedet": (1.3, 0.80),
    "faster_rcnn": (2.6, 1.0),
    "rfcn": (1.8, 0.93),
}
TWO_STAGE = ("faster_rcnn", "rfcn")
# Shares of the multiply-adds in the extractor and the neck (the head has the rest).
PARTS = {
    "ssd": (0.75, 0.10),
    "dssd": (0.55, 0.30),
    "refinedet": (0.60, 0.20),
    "faster_rcnn": (0.50, 0.0),
    "rfcn": (0.80, 0.0),
}
TARGETS = {  # the classes the sweeps/meta_arch/*.yaml options build
    "ssd": "models.meta_arch.single_shot.SSD",
    "dssd": "models.meta_arch.single_shot.DSSD",
    "refinedet": "models.meta_arch.refinedet.RefineDet",
    "faster_rcnn": "models.meta_arch.two_stage.FasterRCNN",
    "rfcn": "models.meta_arch.two_stage.RFCN",
}
ENV = {
    "device": "cpu",
    "device_name": "Fake CPU 9000",
    "num_threads": 2,
    "torch_version": "2.14.1",
    "torchvision_version": "0.29.0",
    "timm_version": "1.0",
    "python_version": "3.11",
    "precision": "fp32",
    "git_sha": "abc123",
    "cpu_count": 2,
}


def fake_result(
    meta: str, ext: str, size: int, proposals: int | None = None, stride: int = 16
) -> dict:
    """One plausible ok result.json for a configuration."""
    cost, acc = EXTRACTORS[ext]
    mcost, macc = META[meta]
    scale = (size / 300) ** 2
    prop = 1.0 if proposals is None else (0.85 + 0.15 * min(proposals, 300) / 300)
    prop_cost = 1.0 if proposals is None or meta == "rfcn" else 0.4 + 0.6 * proposals / 300
    res_acc = 1.0 if size >= 600 else 0.84
    stride_f = 1.12 if stride == 8 else 1.0
    m = 0.32 * acc * macc * prop * res_acc * (1.04 if stride == 8 else 1.0)
    latency = 12.0 * cost * mcost * scale * prop_cost * stride_f**3
    gmacs = 3.0 * cost * mcost * scale * prop_cost * stride_f**3
    extractor_share, neck_share = PARTS[meta]
    config = {
        "meta_arch": {"_target_": TARGETS[meta]},
        "extractor": {"output_stride": stride},
        "train": {"max_iters": 100, "batch_size": 8},
        "bench": {},
    }
    if proposals is not None:
        config["meta_arch"]["num_proposals"] = proposals
    # What the job records from the model (family, display name, neck, proposals).
    model_keys = import_object(TARGETS[meta]).config_info(config["meta_arch"]).result_keys()
    return {
        **model_keys,
        "status": "ok",
        "error": None,
        "meta_arch": meta,
        "extractor": ext,
        "dataset": "synthetic",
        "image_size": size,
        "num_classes": 3,
        "map": m,
        "map_50": min(0.99, 1.7 * m + 0.05),
        "map_75": 1.05 * m - 0.01,
        "map_small": m * (0.35 if size < 600 else 0.6) * (0.6 if meta == "ssd" else 1),
        "map_medium": m * 1.0,
        "map_large": m * 1.5,
        "mar_100": m * 1.3,
        "latency_ms": latency,
        "latency_ms_p90": latency * 1.08,
        "latency_ms_p99": latency * 1.15,
        "preprocess_ms": 0.4,
        "predict_ms": latency * 0.8,
        "postprocess_ms": latency * 0.2 - 0.4,
        "gmacs": gmacs,
        "gmacs_extractor": extractor_share * gmacs,
        "gmacs_neck": neck_share * gmacs,
        "gmacs_head": (1 - extractor_share - neck_share) * gmacs,
        "peak_mem_mb": 40 * cost + 25 * mcost * scale * prop_cost,
        "train_peak_mem_mb": 300 * cost,
        "params": int(5e6 * cost * mcost),
        "num_anchors": 1917,
        "train_iters": 100,
        "train_seconds": 60.0,
        "final_loss": 1.0,
        "timing_n": 20,
        "latency_warmup": 5,
        "latency_batch_size": 1,
        "latency_includes_postprocess": True,
        "peak_mem_method": "rss",
        "config": config,
        **ENV,
    }


def write_job(root: Path, job: str, result: dict, traceback: str | None = None) -> Path:
    """Write ``root/job/result.json`` (and an optional traceback.txt); returns the folder."""
    folder = root / job
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(result))
    if traceback is not None:
        (folder / "traceback.txt").write_text(traceback)
    return folder


DATA_WARNING = (
    "class 'bird' has 3 val boxes but no training box (/data/val.json): the detector cannot "
    "learn it, and its AP of 0 is averaged into map"
)


def make_fake_sweep(root: Path, *, sizes=(300, 600), proposals=(10, 50, 100, 300)) -> Path:
    """A paper-like sweep folder with ok, one skipped and one failed job; one ok job has a
    data warning."""
    for meta, ext, size in itertools.product(META, EXTRACTORS, sizes):
        props = proposals if meta in TWO_STAGE else (None,)
        for p in props:
            job = f"meta_arch={meta},extractor={ext},data.image_size={size}"
            job += f",meta_arch.num_proposals={p}" if p is not None else ""
            write_job(root, job, fake_result(meta, ext, size, p))
    write_job(
        root,
        "meta_arch=faster_rcnn,extractor=resnet101,extractor.output_stride=8",
        {
            **fake_result("faster_rcnn", "resnet101", max(sizes), max(proposals), stride=8),
            "data_warnings": [DATA_WARNING],
        },
    )
    write_job(
        root,
        "meta_arch=rfcn,extractor=vgg16_refinedet",
        {
            "status": "skipped",
            "meta_arch": "rfcn",
            "extractor": "vgg16_refinedet",
            "error": "vgg16_refinedet cannot split its last stage",
            **ENV,
        },
    )
    write_job(
        root,
        "meta_arch=ssd,extractor=mobilenet_v1,train.optimizer.lr=-1",
        {
            "status": "failed",
            "meta_arch": "ssd",
            "extractor": "mobilenet_v1",
            "error": "ValueError: Invalid learning rate: -1.0",
            **ENV,
        },
        traceback="Traceback (most recent call last):\nValueError: Invalid learning rate: -1.0\n",
    )
    return root


def with_intervals(result: dict, seed: int = 0, half_width: float = 0.15) -> dict:
    """``result`` as repeat ``seed`` would give it, with accuracy and latency intervals:
    accuracy moves by a seed-dependent 4 % (training noise), intervals span +-half_width
    relative (validation-sample noise), the latency interval +-3 %."""
    out = dict(result, seed=seed)
    out["config"] = {**result["config"], "seed": seed}
    shift = 1.0 + 0.04 * (seed % 3 - 1)
    for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"):
        if result.get(key) is not None:
            value = result[key] * shift
            out[key] = value
            out[f"{key}_ci_low"] = value * (1 - half_width)
            out[f"{key}_ci_high"] = min(1.0, value * (1 + half_width))
    out["latency_ms_ci_low"] = result["latency_ms"] * 0.97
    out["latency_ms_ci_high"] = result["latency_ms"] * 1.03
    out.update(bootstrap_samples=1000, bootstrap_method="percentile", val_images=100)
    out["data_stats"] = {"train": {"images": 600}, "val": {"images": 100}}
    return out


def make_repeat_sweep(root: Path, *, seeds=(0, 1), size: int = 300) -> Path:
    """Every meta-architecture over two extractors, each run once per seed, with intervals."""
    for meta, ext, seed in itertools.product(META, ("mobilenet_v1", "resnet101"), seeds):
        result = with_intervals(
            fake_result(meta, ext, size, 300 if meta in TWO_STAGE else None), seed
        )
        write_job(root, f"meta_arch={meta},extractor={ext},seed={seed}", result)
    return root
