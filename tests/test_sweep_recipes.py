"""Per-meta-architecture recipes (sweeps/recipe/<set>/<meta_arch>.yaml, chosen by the
``recipe_set`` group): every job of ``quick`` composes its meta-architecture's recipe, both
extractors of one meta-architecture get the same one, and nothing else picks them up.

Expected values are read from the recipe files themselves with OmegaConf (not through the
composition under test), so a recipe that silently stopped applying fails here.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import benchmark.app  # noqa: F401  (registers the detbench_job_dir resolver)

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
QUICK_RECIPES = SWEEPS / "recipe" / "quick"


def _compose(*overrides: str):
    with initialize_config_module("sweeps", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def _quick_jobs() -> list[tuple[str, str]]:
    params = _compose("+sweep=quick").hydra.sweeper.params
    return list(
        itertools.product(str(params.meta_arch).split(","), str(params.extractor).split(","))
    )


def _leaves(node, prefix: str = "") -> dict[str, object]:
    """``{"train.max_iters": 150, ...}`` for every leaf of a (nested) config node."""
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if OmegaConf.is_dict(value):
            out.update(_leaves(value, path + "."))
        else:
            out[path] = value
    return out


def _recipe(meta_arch: str) -> dict[str, object]:
    path = QUICK_RECIPES / f"{meta_arch}.yaml"
    assert path.is_file(), f"quick has no recipe for {meta_arch}: {path}"
    return _leaves(OmegaConf.load(path))


def test_every_quick_job_composes_its_meta_architectures_recipe():
    jobs = _quick_jobs()
    assert len(jobs) == 10
    for meta_arch, extractor in jobs:
        recipe = _recipe(meta_arch)
        assert "train.max_iters" in recipe and "train.batch_size" in recipe, meta_arch
        cfg = _compose("+sweep=quick", f"meta_arch={meta_arch}", f"extractor={extractor}")
        assert cfg.hydra.runtime.choices.recipe_set == "quick"
        for key, expected in recipe.items():
            assert OmegaConf.select(cfg, key) == expected, (meta_arch, extractor, key)


def test_recipes_differ_by_meta_architecture_not_by_extractor():
    jobs = _quick_jobs()
    budgets = {}
    for meta_arch, extractor in jobs:
        cfg = _compose("+sweep=quick", f"meta_arch={meta_arch}", f"extractor={extractor}")
        got = (
            OmegaConf.to_container(cfg.train, resolve=True),
            OmegaConf.to_container(cfg.meta_arch, resolve=True),
            cfg.extractor.get("output_stride"),
        )
        # The sweep compares extractors at equal budget: one recipe per meta-architecture.
        assert budgets.setdefault(meta_arch, got) == got, (meta_arch, extractor)
    # And the recipes are not all the same budget (they exist because the costs differ).
    assert len({(b[0]["max_iters"], b[0]["batch_size"]) for b in budgets.values()}) > 1


def test_command_line_overrides_beat_the_recipe():
    cfg = _compose("+sweep=quick", "meta_arch=ssd", "train.max_iters=7", "train.batch_size=3")
    assert (cfg.train.max_iters, cfg.train.batch_size) == (7, 3)


@pytest.mark.parametrize("overrides", [(), ("meta_arch=rfcn",), ("+sweep=smoke",)])
def test_no_recipe_outside_a_preset_that_selects_one(overrides):
    cfg = _compose(*overrides)
    defaults = OmegaConf.load(SWEEPS / "train" / "default.yaml")
    assert cfg.hydra.runtime.choices.recipe_set == "none"
    if "+sweep=smoke" not in overrides:
        assert cfg.train.max_iters == defaults.max_iters
        assert cfg.train.batch_size == defaults.batch_size


def test_quick_without_its_recipes_is_one_flag_away():
    cfg = _compose("+sweep=quick", "recipe_set=none", "meta_arch=ssd")
    defaults = OmegaConf.load(SWEEPS / "train" / "default.yaml")
    assert cfg.train.max_iters == defaults.max_iters
