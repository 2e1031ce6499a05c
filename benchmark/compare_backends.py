"""Side by side: each meta-architecture in eager PyTorch and in ONNX Runtime (``bench.backend``).

    python -m benchmark.compare_backends [--meta-archs NAME ...] [--extractor E] [--size S]
                                         [--repeats N] [--threads T] [--json PATH]

The same model (random weights, 20 classes + background, no downloads) is timed in both
backends on the same images, threads and precision (fp32), in *alternating paired runs* as
:mod:`benchmark.compare`: run ``r`` times eager then ONNX Runtime on image ``r`` (the order
flips every run), so load changes on a shared machine hit both sides alike; the ratio is the
median of the per-run ratios. Each call is :func:`benchmark.measure.latency.timed_call`, the
call a job times (preprocess, predict, postprocess with NMS, batch 1), on copies prepared
as jobs prepare them (:func:`benchmark.measure.fastpath.prepare_inference`: eager with BN
folded, the ``bench`` default; ONNX Runtime exported after folding). Before timing, the
runtime's outputs are checked against eager's (:func:`benchmark.measure.parity.compare_outputs`)
and a pair beyond tolerance is reported, not timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmark.device import Device
from benchmark.measure.fastpath import prepare_inference
from benchmark.measure.latency import inference_context, timed_call
from benchmark.measure.parity import compare_outputs, parity_failures
from benchmark.measure.runtime import backend_version
from benchmark.measure.settings import BenchSettings

META_ARCHS = ("ssd", "dssd", "refinedet", "faster_rcnn", "rfcn")
NUM_CLASSES = 20
SIDES = ("eager", "onnxruntime")


def build(meta_arch: str, extractor: str, size: int, seed: int = 0) -> torch.nn.Module:
    """The job's model of ``meta_arch`` over ``extractor`` at ``size`` px (random weights)."""
    from hydra import compose, initialize_config_module

    from benchmark.build import build_detector

    with initialize_config_module(config_module="sweeps", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"meta_arch={meta_arch}",
                f"extractor={extractor}",
                f"data.image_size={size}",
            ],
        )
    torch.manual_seed(seed)
    return build_detector(cfg, num_classes=NUM_CLASSES).eval()


def compare_meta_arch(
    meta_arch: str, *, extractor: str, size: int, repeats: int, warmup: int, parity_images: int
) -> dict[str, Any]:
    """Export, check parity, then time eager and ONNX Runtime in alternating pairs."""
    device = Device.from_spec("cpu")
    model = build(meta_arch, extractor, size)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g) for _ in range(max(repeats, parity_images))]
    base = BenchSettings(parity_images=parity_images)
    eager, _ = prepare_inference(model, base, device, images[:1])
    ort_settings = dataclasses.replace(base, backend="onnxruntime")
    t0 = time.perf_counter()
    ort, _ = prepare_inference(model, ort_settings, device, images[:1])
    export_s = time.perf_counter() - t0
    parity = compare_outputs(model, ort, [(im, {}) for im in images], device, ort_settings)
    entry: dict[str, Any] = {
        "meta_arch": meta_arch,
        "extractor": extractor,
        "size": size,
        "export_s": export_s,
        "parity_boxes_px": parity["parity_max_abs_diff"]["boxes"],
        "parity_scores": parity["parity_max_abs_diff"]["scores"],
    }
    if problems := parity_failures(parity, None):
        return {**entry, "error": "; ".join(problems)}
    models = {"eager": eager, "onnxruntime": ort}
    times: dict[str, dict[str, list[float]]] = {s: {"e2e": [], "predict": []} for s in SIDES}
    with inference_context(base):
        for r in range(warmup + repeats):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            for side in order:
                t, _ = timed_call(models[side], [images[r % len(images)]], device, base)
                if r >= warmup:
                    times[side]["e2e"].append(t["end_to_end"])
                    times[side]["predict"].append(t["predict"])
    ratios = [
        o / e for o, e in zip(times["onnxruntime"]["e2e"], times["eager"]["e2e"], strict=True)
    ]
    for side in SIDES:
        entry[f"{side}_ms"] = statistics.median(times[side]["e2e"])
        entry[f"{side}_predict_ms"] = statistics.median(times[side]["predict"])
    entry["ratio"] = statistics.median(ratios)
    return entry


def format_table(entries: Sequence[dict[str, Any]]) -> str:
    """Markdown: per meta-architecture both backends' medians (end to end and predict)."""
    lines = [
        "| meta-architecture | size | eager (ms) | ONNX Runtime (ms) | ORT / eager | "
        "predict eager (ms) | predict ORT (ms) | parity: boxes (px) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        name = f"{e['meta_arch']} w/ {e['extractor']}"
        if "error" in e:
            lines.append(f"| {name} | {e['size']} | parity failed: {e['error']} |||||")
            continue
        lines.append(
            f"| {name} | {e['size']} | {e['eager_ms']:.1f} | {e['onnxruntime_ms']:.1f} | "
            f"{e['ratio']:.2f} | {e['eager_predict_ms']:.1f} | {e['onnxruntime_predict_ms']:.1f} "
            f"| {e['parity_boxes_px']:.1g} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.compare_backends", description=__doc__.split("\n")[0]
    )
    p.add_argument("--meta-archs", nargs="+", choices=META_ARCHS, default=list(META_ARCHS))
    p.add_argument("--extractor", default="resnet18", help="every model's extractor (resnet18)")
    p.add_argument("--size", type=int, default=128, help="square input side (128)")
    p.add_argument("--repeats", type=int, default=30, help="paired timed runs (30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed paired runs (3)")
    p.add_argument("--parity-images", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch and ORT intra-op threads")
    p.add_argument("--json", type=Path, default=None, help="write the entries to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    entries = []
    for meta_arch in args.meta_archs:
        entries.append(
            compare_meta_arch(
                meta_arch,
                extractor=args.extractor,
                size=args.size,
                repeats=args.repeats,
                warmup=args.warmup,
                parity_images=args.parity_images,
            )
        )
        print(format_table(entries[-1:]).splitlines()[-1], flush=True)
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{Device.from_spec('cpu').name}, {torch.get_num_threads()} thread(s), fp32, "
        f"torch {torch.__version__}, onnxruntime {backend_version('onnxruntime')}, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print(format_table(entries))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(entries, indent=2))
    return entries


if __name__ == "__main__":
    main()
