"""Frontier search, the parts without jobs: hypervolume (hand-computed areas), objectives
returned to the sweeper, conditional axes, and the report's replay of a search folder."""

from __future__ import annotations

import json
import math

import optuna
import pandas as pd
import pytest

from benchmark.report.search import search_progress
from benchmark.search.hypervolume import (
    hypervolume_2d,
    hypervolume_curve,
    jobs_to_reach,
    reference_cost,
)
from benchmark.search.objectives import cost_column, objective_spec, objectives_of
from benchmark.search.space import SearchSpaceError, conditional_axes, suggest_conditional

# -- hypervolume: areas computed by hand ----------------------------------------------------


def test_hypervolume_linear_staircase():
    # ref (cost 10, acc 0). (2, .5) holds [2,10]x[0,.5] = 4; (5, .8) adds [5,10]x[.5,.8] = 1.5;
    # (8, .6) is dominated by (5, .8) and adds nothing.
    hv = hypervolume_2d([2, 5, 8], [0.5, 0.8, 0.6], 10, log_cost=False)
    assert hv == pytest.approx(5.5)


def test_hypervolume_log_cost():
    # log10: ref 100 -> 2; (1, .2) -> [0,2]x[0,.2] = .4; (10, .5) -> [1,2]x[.2,.5] = .3
    assert hypervolume_2d([10, 1], [0.5, 0.2], 100) == pytest.approx(0.7)


def test_points_outside_the_reference_box_or_nan_add_nothing():
    base = hypervolume_2d([2], [0.5], 10, log_cost=False)
    assert base == pytest.approx(4.0)
    more = hypervolume_2d(
        [2, 12, math.nan, 3, 2], [0.5, 0.9, 0.9, 0.0, 0.5], 10, log_cost=False
    )  # beyond the reference cost, NaN cost, accuracy at the reference, a duplicate
    assert more == pytest.approx(base)
    assert hypervolume_2d([], [], 10) == 0.0


def test_curve_reference_and_jobs_to_reach():
    # jobs in order: (5, .4) -> 5*.4 = 2; a failed job (NaN) -> 2; (2, .4) -> 8*.4 = 3.2;
    # (4, .9) -> 3.2 + 6*.5 = 6.2
    curve = hypervolume_curve([5, math.nan, 2, 4], [0.4, math.nan, 0.4, 0.9], 10, log_cost=False)
    assert curve == pytest.approx([2.0, 2.0, 3.2, 6.2])
    assert jobs_to_reach(curve, 0.9 * 6.2) == 4
    assert jobs_to_reach(curve, 3.0) == 3
    assert jobs_to_reach(curve, 7.0) is None
    assert reference_cost([1.0, 4.0, math.nan]) == pytest.approx(4.4)
    with pytest.raises(ValueError, match="no finite cost"):
        reference_cost([math.nan])


# -- objectives ---------------------------------------------------------------------------


def test_objectives_of_an_ok_result_are_its_values_in_order():
    result = {"status": "ok", "map": 0.25, "latency_ms": 12.5}
    values = objectives_of(result, ["map", "latency_ms"])
    assert list(values) == [0.25, 12.5]
    assert values.result["status"] == "ok"  # the progress callback reads the status


@pytest.mark.parametrize(
    "result",
    [
        {"status": "failed", "map": 0.25, "latency_ms": 12.5},
        {"status": "skipped", "map": None, "latency_ms": None},
        {"status": "refused"},
        {"status": "ok", "map": None, "latency_ms": 12.5},  # accuracy not measured
        {"status": "ok", "map": math.nan, "latency_ms": 12.5},
        {"status": "ok", "map": 0.25, "latency_ms": math.inf},
        {"status": "ok", "map": True, "latency_ms": 12.5},
    ],
)
def test_anything_but_finite_ok_values_is_a_failed_trial_not_zeros(result):
    assert objectives_of(result, ["map", "latency_ms"]) is None


def test_objective_spec_names_columns_and_directions():
    assert objective_spec("map", "latency") == (
        ["map", "latency_ms"],
        ["maximize", "minimize"],
    )
    assert cost_column("gmacs") == "gmacs"
    assert objective_spec("params", "memory")[0][0] == "params"  # a stand-in accuracy
    with pytest.raises(ValueError, match="hydra.sweeper.cost: unknown cost 'speed'"):
        cost_column("speed")
    with pytest.raises(ValueError, match="hydra.sweeper.accuracy: 'label'"):
        objective_spec("label", "latency")


def test_the_sweeper_fails_trials_whose_job_returned_no_objectives():
    from hydra.core.utils import JobReturn, JobStatus

    from benchmark.search.objectives import Objectives
    from benchmark.search.sweeper import FrontierSearch

    search = FrontierSearch(
        accuracy="map", cost="latency", conditional=None, max_duplicates=5, grid=None,
        sampler=None, storage=None, study_name=None, n_trials=1, n_jobs=1,
        max_failure_rate=1.0, search_space=None, custom_search_space=None, params=None,
    )  # fmt: skip

    def ret(value, status=JobStatus.COMPLETED):
        return JobReturn(_return_value=value, status=status)

    ok = Objectives([0.3, 12.0], {"status": "ok"})
    assert search._values(ret(ok)) == [0.3, 12.0]
    assert search._values(ret(None)) is None  # failed, skipped, refused, unmeasured
    assert search._values(ret(RuntimeError("boom"), JobStatus.FAILED)) is None  # job raised
    assert search._values(ret({"status": "ok", "map": 0.3})) is None  # a result dict
    assert search._values(ret([0.3])) is None  # one value for two objectives


# -- conditional axes ---------------------------------------------------------------------

CONDITIONAL = {
    "meta_arch.num_proposals": {
        "when": {"meta_arch": ["faster_rcnn", "rfcn"]},
        "choices": [10, 300],
    },
    "neck": {"when": {"meta_arch": ["ssd", "dssd"]}, "choices": ["none", "tcb"]},
}


def _trial(meta_arch: str) -> optuna.Trial:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    trial.suggest_categorical("meta_arch", [meta_arch])
    return trial


def test_a_conditional_axis_is_suggested_only_when_its_condition_holds():
    axes = conditional_axes(CONDITIONAL)
    two_stage, single_shot = _trial("rfcn"), _trial("ssd")
    suggest_conditional(two_stage, axes, {})
    suggest_conditional(single_shot, axes, {})
    assert set(two_stage.params) == {"meta_arch", "meta_arch.num_proposals"}
    assert two_stage.params["meta_arch.num_proposals"] in ("10", "300")
    assert set(single_shot.params) == {"meta_arch", "neck"}


def test_a_command_line_override_narrows_a_conditional_axis_and_keeps_its_condition():
    axes = conditional_axes(CONDITIONAL, ["neck=tcb", "meta_arch.num_proposals=50,100"])
    by_name = {a.name: a for a in axes}
    assert by_name["neck"].choices == ("tcb",)
    assert by_name["meta_arch.num_proposals"].choices == ("50", "100")
    trial = _trial("faster_rcnn")
    suggest_conditional(trial, axes, {})
    assert "neck" not in trial.params  # still single-shot only


def test_a_fixed_override_can_meet_a_condition():
    axes = conditional_axes(CONDITIONAL)
    trial = optuna.create_study().ask()
    suggest_conditional(trial, axes, {"meta_arch": "faster_rcnn"})
    assert set(trial.params) == {"meta_arch.num_proposals"}


def test_a_conditional_axis_without_condition_is_refused():
    with pytest.raises(SearchSpaceError, match="conditional.neck: needs `when"):
        conditional_axes({"neck": {"choices": ["none"]}})


# -- the report's replay of a search folder -------------------------------------------------


def _result(folder, job, status, params, gmacs, fp):
    path = folder / job / "result.json"
    path.parent.mkdir(parents=True)
    ok = status == "ok"
    path.write_text(
        json.dumps(
            {
                "status": status,
                "meta_arch": "ssd",
                "extractor": "mobilenet_v3_small",
                "image_size": 64,
                "params": params if ok else None,
                "gmacs": gmacs if ok else None,
                "config_fingerprint": fp,
            }
        )
    )


def test_search_progress_replays_jobs_in_order_against_a_grid(tmp_path):
    from benchmark.report.table import load_results

    search, grid = tmp_path / "search", tmp_path / "grid"
    # grid: (gmacs, params) = (1, 2), (4, 8), (2, 1) dominated; largest cost 4 -> ref 4.4
    for job, cost, acc, fp in [("g1", 1, 2, "a"), ("g2", 4, 8, "b"), ("g3", 2, 1, "c")]:
        _result(grid, job, "ok", acc, cost, fp)
    # the search ran b (4, 8), a failed job, then a (1, 2); trial 1 repeated b (not a job)
    _result(search, "s1", "ok", 8, 4, "b")
    _result(search, "s2", "failed", None, None, "x")
    _result(search, "s3", "ok", 2, 1, "a")
    (search / "search.json").write_text(
        json.dumps({"accuracy": "params", "cost": "gmacs", "sampler": "NSGAIISampler"})
    )
    pd.DataFrame(
        {
            "trial": [0, 1, 2, 3],
            "state": ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"],
            "job": ["s1", "", "s2", "s3"],
            "launched": [True, False, True, True],
        }
    ).to_csv(search / "search_trials.csv", index=False)
    progress = search_progress(search, load_results(search), grid)
    # log10 areas with ref 4.4: (4, 8) -> log(4.4/4) * 8; (1, 2) adds log(4.4/1) * 2 (its
    # accuracy is below 8, so its strip is [log 1, log 4.4] x [0, 2] minus the overlap:
    # the staircase sorted by cost gives log(4.4)*2 + log(4.4/4)*(8-2))
    first = math.log10(4.4 / 4) * 8
    full = math.log10(4.4) * 2 + math.log10(4.4 / 4) * 6
    assert list(progress.jobs["job"]) == ["s1", "s2", "s3"]
    assert progress.jobs["hypervolume"].tolist() == pytest.approx([first, first, full])
    assert progress.grid_hypervolume == pytest.approx(full)  # g3 is dominated
    assert progress.fraction == pytest.approx(1.0)
    assert progress.jobs_to_target == 3
    assert len(progress.grid_frontier) == 2 and len(progress.found) == 2
    assert search_progress(grid, load_results(grid)) is None  # not a search folder


# -- the preset -----------------------------------------------------------------------------


def test_the_preset_composes_and_every_conditional_choice_composes_where_it_applies():
    from hydra import compose, initialize_config_module

    with initialize_config_module("sweeps", version_base="1.3"):
        cfg = compose("config", overrides=["+search=frontier"], return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        assert sweeper._target_.endswith("FrontierSweeper")
        assert sweeper.sampler._target_ == "optuna.samplers.NSGAIISampler"
        assert objective_spec(sweeper.accuracy, sweeper.cost)[0] == ["map", "latency_ms"]
        axes = conditional_axes(sweeper.conditional)
        assert {a.name for a in axes} == {"meta_arch.num_proposals", "neck"}
        for meta_arch in str(sweeper.params.meta_arch).split(","):
            for axis in axes:
                if not axis.applies({"meta_arch": meta_arch}):
                    continue
                for choice in axis.choices:  # composes: the key exists for this detector
                    job = compose("config", [f"meta_arch={meta_arch}", f"{axis.name}={choice}"])
                    assert job.meta_arch is not None
        # the preset changes no job setting: its jobs are those of `detbench -m` (identity)
        plain = compose("config", overrides=["sweep_name=frontier"])
        assert compose("config", overrides=["+search=frontier"]) == plain
