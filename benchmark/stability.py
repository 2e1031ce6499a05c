"""How repeatable is a latency number? Run one configuration several times and print the spread.

    python -m benchmark.stability meta_arch=ssd extractor=mobilenet_v2 data=synthetic --runs 5

Each run is a fresh profile-only job (``train.max_iters=0``): data and model are built anew
(same seed, so the same weights) and only latency is measured, through the same
:func:`benchmark.job.run_job` a sweep uses, in one process - as Hydra's basic launcher runs a
multirun. Prints the per-run median end-to-end latency and across runs min / median / max
and the relative spread ``(max - min) / median``. docs/measurement.md has typical values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

# Only latency: the other measurements do not change the timing and take most of a job's time.
_LATENCY_ONLY = [
    "train.max_iters=0",
    "force=true",
    "progress=false",
    "bench.enabled.throughput=false",
    "bench.enabled.flops=false",
    "bench.enabled.memory=false",
    "bench.enabled.roofline=false",
]


def spread(values: list[float]) -> dict[str, float]:
    """``min``, ``median``, ``max`` and ``relative_spread = (max - min) / median``."""
    med = statistics.median(values)
    return {
        "min": min(values),
        "median": med,
        "max": max(values),
        "relative_spread": (max(values) - min(values)) / med if med else float("nan"),
    }


def run(overrides: list[str], runs: int) -> dict[str, Any]:
    """Compose the config with ``overrides`` and time it ``runs`` times.

    Returns:
        ``{"runs": [{"latency_ms", "latency_ms_p90", ...}], "latency_ms": spread(...),
        "predict_ms": spread(...)}``.
    """
    from hydra import compose, initialize_config_module

    from benchmark.job import run_job

    with initialize_config_module(config_module="sweeps", version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, *_LATENCY_ONLY])
    per_run = []
    with tempfile.TemporaryDirectory(prefix="detbench-stability-") as tmp:
        for i in range(runs):
            result = run_job(cfg, Path(tmp) / f"run{i}", progress=False)
            if result.get("status") != "ok" or result.get("latency_ms") is None:
                raise RuntimeError(
                    f"run {i} did not measure latency: {result.get('status')}: "
                    f"{result.get('error') or result.get('measure_errors')}"
                )
            per_run.append(
                {
                    k: result[k]
                    for k in (
                        "latency_ms",
                        "latency_ms_p90",
                        "latency_ms_std",
                        "preprocess_ms",
                        "predict_ms",
                        "postprocess_ms",
                        "timing_n",
                        "num_threads",
                        "device_name",
                    )
                }
            )
    return {
        "overrides": overrides,
        "runs": per_run,
        "latency_ms": spread([r["latency_ms"] for r in per_run]),
        "predict_ms": spread([r["predict_ms"] for r in per_run]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.stability", description=__doc__.split("\n")[0]
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for detbench")
    parser.add_argument("--runs", type=int, default=5, help="number of runs (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2 for a spread")
    summary = run(args.overrides, args.runs)
    for i, r in enumerate(summary["runs"]):
        print(
            f"run {i}: latency_ms median {r['latency_ms']:.3f}  p90 {r['latency_ms_p90']:.3f}  "
            f"predict {r['predict_ms']:.3f}  (n={r['timing_n']}, threads={r['num_threads']})"
        )
    for key in ("latency_ms", "predict_ms"):
        s = summary[key]
        print(
            f"{key} across {args.runs} runs: min {s['min']:.3f}  median {s['median']:.3f}  "
            f"max {s['max']:.3f}  relative spread {100 * s['relative_spread']:.1f}%"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
