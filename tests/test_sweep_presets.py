"""Every sweep preset (sweeps/sweep/*.yaml) composes, names its folder, and sweeps only over
options that exist: a typo in a preset must fail here, not an hour into a GPU sweep."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
PRESETS = sorted(p.stem for p in (SWEEPS / "sweep").glob("*.yaml"))
GROUPS = ("meta_arch", "extractor", "neck", "data", "train", "bench")
META_ARCHS = {"ssd", "dssd", "refinedet", "faster_rcnn", "rfcn"}
# Jobs per preset: the sizes the preset headers and the README promise.
EXPECTED_JOBS = {
    "smoke": 5,
    "quick": 10,
    "paper": 60,
    "paper_proposals": 120,
    "paper_atrous": 48,
    "proposals": 12,
    "resolution": 15,
    "extractors": 15,
    "necks": 15,
    "extractors_gpu": 12,
}


def _compose(preset: str, *overrides: str):
    with initialize_config_module("sweeps", version_base="1.3"):
        return compose(
            "config", overrides=[f"+sweep={preset}", *overrides], return_hydra_config=True
        )


def _axes(cfg) -> dict[str, list[str]]:
    return {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}


def test_the_issue_presets_exist():
    assert {"quick", "smoke", "paper", "proposals", "resolution", "extractors", "necks"} <= set(
        PRESETS
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_sweeps_existing_options(preset):
    cfg = _compose(preset)
    axes = _axes(cfg)
    assert axes, "a preset sweeps at least one axis"
    assert cfg.sweep_name == (preset if not preset.startswith("paper") else "paper")
    for key, values in axes.items():
        if key in GROUPS:
            for value in values:
                assert (SWEEPS / key / f"{value}.yaml").is_file(), f"{key}={value}"
        else:
            assert cfg.get(key.split(".")[0]) is not None, key
    assert len(list(itertools.product(*axes.values()))) == EXPECTED_JOBS[preset]
    # Every job of the product composes (Hydra checks this too, before the first job runs).
    first = [f"{k}={v[0]}" for k, v in axes.items()]
    last = [f"{k}={v[-1]}" for k, v in axes.items()]
    for overrides in (first, last):
        _compose(preset, *overrides)


@pytest.mark.parametrize("preset", ["quick", "smoke"])
def test_quick_and_smoke_cover_all_meta_architectures(preset):
    assert set(_axes(_compose(preset))["meta_arch"]) == META_ARCHS


def test_job_folder_is_named_from_overrides_without_the_preset():
    cfg = _compose("quick", "meta_arch=rfcn", "extractor=resnet18")
    name = cfg.hydra.job.override_dirname
    assert name == "extractor=resnet18,meta_arch=rfcn"  # no +sweep=, no results_root=
    assert "sweep" in cfg.hydra.job.config.override_dirname.exclude_keys
