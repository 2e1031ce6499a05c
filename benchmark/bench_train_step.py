"""Side-by-side timing of a training step: NCHW against ``train.channels_last``.

    python -m benchmark.bench_train_step --pairs 6 +sweep=quick meta_arch=ssd extractor=mobilenet_v2

One process, one thread, two copies of the same detector (same initial weights, same
optimizer), the same batches: each pair runs a step of the NCHW copy then a step of the
NHWC copy and records the thread CPU time of each. The ratio is taken pair by pair and its
median printed, which cancels the drift of a shared machine better than two separate runs
(thread CPU time also excludes the time the process waits for a core; it still grows when
other processes evict the caches, equally for both sides of a pair). The first two pairs are
warm-up. The trailing arguments are Hydra overrides of ``sweeps/config.yaml``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from benchmark.build import build_detector
from benchmark.data import build_data, build_loader
from benchmark.job import _resize_mode, seed_everything
from benchmark.train import _batches, to_device


def _step(model, params, optimizer, batch, clip: float) -> float:
    """One training step as ``benchmark.train.train`` runs it; returns its thread CPU seconds."""
    images, targets = batch
    t0 = time.thread_time()
    loss = sum(model(images, targets).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return time.thread_time() - t0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=6, help="timed pairs (after 2 warm-up)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. meta_arch=ssd")
    args = parser.parse_args(argv)
    with initialize_config_module("sweeps", version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    torch.set_num_threads(1)
    seed_everything(int(cfg.seed))
    size = int(cfg.data.image_size)
    data = build_data(cfg.data, resize_mode=_resize_mode(cfg), image_size=size)
    nchw = build_detector(cfg, num_classes=len(data.class_names)).train()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    sides = []
    for model in (nchw, nhwc):
        params = [p for p in model.parameters() if p.requires_grad]
        sides.append((model, params, instantiate(cfg.train.optimizer, params=params)))
    loader = build_loader(
        data.train, batch_size=int(cfg.train.batch_size), shuffle=True, seed=0, drop_last=True
    )
    batches = _batches(loader)
    clip = float(cfg.train.get("grad_clip") or 0.0)
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(args.pairs + 2):
        batch = to_device(*next(batches), torch.device("cpu"))
        pair = [_step(*side, batch, clip) for side in sides]
        if i >= 2:
            for t, side_times in zip(pair, times, strict=True):
                side_times.append(t)
    ratios = [b / a for a, b in zip(*times, strict=True)]
    out = {
        "overrides": args.overrides,
        "pairs": args.pairs,
        "nchw_step_s": statistics.median(times[0]),
        "channels_last_step_s": statistics.median(times[1]),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
