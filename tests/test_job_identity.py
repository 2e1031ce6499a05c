"""A job's identity is its resolved configuration; its folder is never reused for another.

One tiny real job (SSD over MobileNetV3-Small, 2 steps, evaluated; tests/job_toys.py) is run
once into a template folder; each test works on a copy, as a user re-running, changing the
configuration, forcing, resuming after a kill, or diverging would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
import torch
from ddp_toys import toy_dataset, toy_model, toy_train_cfg
from hydra import compose, initialize_config_module
from job_toys import NAN_OPTIMIZER, tiny_cfg
from torch.utils.data import DataLoader

from benchmark.data import collate
from benchmark.device import Device
from benchmark.identity import config_fingerprint, fingerprint, identity_config, result_fingerprint
from benchmark.job import run_job
from benchmark.report.callback import SweepReport
from benchmark.results import read_result
from benchmark.train import (
    CHECKPOINT_FILE,
    CheckpointMismatch,
    TrainingDiverged,
    load_checkpoint,
    save_checkpoint,
    train,
)

CPU = Device.from_spec("cpu")


@pytest.fixture(scope="module", autouse=True)
def hydra_sweeps():
    with initialize_config_module("sweeps", version_base="1.3"):
        yield


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def template(tmp_path_factory, data_root) -> Path:
    """A finished tiny job's folder, written under umask 022."""
    out = tmp_path_factory.mktemp("template") / "job"
    old = os.umask(0o022)
    try:
        result = run_job(tiny_cfg(data_root), out, progress=False)
    finally:
        os.umask(old)
    assert result["status"] == "ok", result["error"]
    return out


@pytest.fixture
def job(template, tmp_path) -> Path:
    """A copy of the template folder, for one test to change."""
    return Path(shutil.copytree(template, tmp_path / "job"))


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- the fingerprint --------------------------------------------------------------------


def test_fingerprint_is_sha256_of_the_canonical_json():
    """Hand-computed: sorted keys, no spaces, NaN as null."""
    expected = hashlib.sha256(b'{"a":[1.5,null],"b":{"c":1}}').hexdigest()
    assert fingerprint({"b": {"c": 1}, "a": [1.5, None]}) == expected
    assert config_fingerprint({"b": {"c": 1}, "a": [1.5, float("nan")]}) == expected


NOT_IDENTITY = [
    "progress=false",
    "force=true",
    "results_root=/elsewhere",
    "sweep_name=other",
    "timing_lock=false",
    "timing_lock_dir=/tmp/locks",
    "train.resume=false",
    "train.checkpoint_every=5",
]
IDENTITY = [
    "device=cpu",
    "num_threads=2",
    "eval_batch_size=4",
    "seed=1",
    "data.image_size=96",
    "extractor=resnet18",
    "train.max_iters=10",
    "train.log_every=5",
    "bench.num_images=7",
    "meta_arch.nms_threshold=0.5",
]


def test_fingerprint_ignores_how_and_where_a_job_runs():
    base = config_fingerprint(compose("config"))
    for override in NOT_IDENTITY:
        assert config_fingerprint(compose("config", overrides=[override])) == base, override


def test_fingerprint_changes_with_every_setting_that_changes_a_number():
    prints = {o: config_fingerprint(compose("config", overrides=[o])) for o in IDENTITY}
    prints["default"] = config_fingerprint(compose("config"))
    assert len(set(prints.values())) == len(prints), prints


def test_a_result_written_before_fingerprints_is_judged_by_its_config():
    cfg = compose("config")
    stored = json.loads(json.dumps(identity_config(cfg)))  # as result.json holds it
    assert result_fingerprint({"status": "ok", "config": stored}) == config_fingerprint(cfg)
    assert result_fingerprint({"status": "ok"}) is None


@pytest.mark.parametrize("override", ["num_threads=2", "device=cpu", "eval_batch_size=4"])
def test_keys_that_change_numbers_name_the_folder(override):
    """Two configurations of one sweep never share a folder."""
    cfg = compose("config", overrides=["meta_arch=ssd", override], return_hydra_config=True)
    assert override in cfg.hydra.job.override_dirname.split(",")


# --- skip, refuse, force ----------------------------------------------------------------


def test_the_job_folder_records_its_fingerprint_and_follows_the_umask(template, data_root):
    result = read_result(template)
    assert result["config_fingerprint"] == config_fingerprint(tiny_cfg(data_root))
    assert result["git_sha"] is None or result["git_sha"] not in json.dumps(result["config"])
    state = load_checkpoint(template / CHECKPOINT_FILE)
    assert state["config_fingerprint"] == result["config_fingerprint"]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in template.iterdir() if p.is_file()}
    assert {"result.json", "checkpoint.pt", "detections.json"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes


def test_the_same_configuration_is_skipped(job, data_root):
    before = (job / "result.json").stat().st_mtime_ns
    result = run_job(tiny_cfg(data_root, "progress=true"), job, progress=False)
    assert result == read_result(job) and result["status"] == "ok"
    assert (job / "result.json").stat().st_mtime_ns == before


def test_another_configuration_is_refused_and_the_folder_kept(job, data_root):
    before = _bytes(job)
    ours = config_fingerprint(tiny_cfg(data_root, "eval_batch_size=4"))
    theirs = read_result(job)["config_fingerprint"]
    result = run_job(tiny_cfg(data_root, "eval_batch_size=4"), job, progress=False)
    assert result["status"] == "refused"
    message = result["error"]
    assert f"refusing to run into {job}" in message and "an ok result" in message
    assert theirs[:12] in message and ours[:12] in message  # both configurations
    assert message.count("meta_arch=SSD extractor=TimmExtractor(mobilenetv3_small_100)") == 2
    differing = [line.strip() for line in message.splitlines() if line.startswith("    ")]
    assert differing == ["eval_batch_size: 8 -> 4"]  # the differing key, and only it
    assert "force=true" in message and "another folder" in message
    after = _bytes(job)
    refused = json.loads(after.pop("refused.json"))
    assert after == before  # result.json, checkpoint.pt, detections.json: untouched
    assert refused["status"] == "refused" and refused["config_fingerprint"] == ours


def test_force_replaces_another_configuration(job, data_root):
    run_job(tiny_cfg(data_root, "eval_batch_size=4"), job, progress=False)  # refused first
    result = run_job(tiny_cfg(data_root, "eval_batch_size=4", "force=true"), job, progress=False)
    ours = config_fingerprint(tiny_cfg(data_root, "eval_batch_size=4"))
    assert result["status"] == "ok" and result["config_fingerprint"] == ours
    assert load_checkpoint(job / CHECKPOINT_FILE)["config_fingerprint"] == ours
    assert not (job / "refused.json").exists()


def test_a_checkpoint_of_another_configuration_is_never_resumed(job, data_root):
    """Killed before its result.json: the checkpoint is all the folder holds of config A."""
    (job / "result.json").unlink()
    checkpoint = (job / CHECKPOINT_FILE).read_bytes()
    result = run_job(tiny_cfg(data_root, "train.optimizer.lr=0.001"), job, progress=False)
    assert result["status"] == "refused" and "a checkpoint.pt of another" in result["error"]
    assert "train.optimizer.lr: 0.006 -> 0.001" in result["error"]
    assert (job / CHECKPOINT_FILE).read_bytes() == checkpoint
    assert not (job / "result.json").exists()


def test_a_checkpoint_without_fingerprint_is_not_resumed(job, data_root):
    (job / "result.json").unlink()
    state = load_checkpoint(job / CHECKPOINT_FILE)
    old = {k: state[k] for k in ("model", "optimizer", "scheduler", "iter")}  # earlier format
    torch.save(old, job / CHECKPOINT_FILE)
    result = run_job(tiny_cfg(data_root), job, progress=False)
    assert (
        result["status"] == "refused" and "without a configuration fingerprint" in result["error"]
    )


def test_the_training_loop_itself_never_resumes_another_configuration(tmp_path):
    """Defense in depth below the job: ``train`` checks the checkpoint's fingerprint too."""
    loader = DataLoader(toy_dataset(), batch_size=2, collate_fn=collate)
    cfg = toy_train_cfg(2)
    cfg.resume = True
    train(toy_model(), loader, cfg, CPU, tmp_path, progress=False, identity=("a" * 64, {}))
    with pytest.raises(CheckpointMismatch, match="another configuration"):
        train(toy_model(), loader, cfg, CPU, tmp_path, progress=False, identity=("b" * 64, {}))


def test_a_failed_result_of_another_configuration_is_replaced(job, data_root):
    """It holds no number to protect: the new configuration runs."""
    failed = {"status": "failed", "error": "x", "config_fingerprint": "0" * 64}
    (job / "result.json").write_text(json.dumps(failed))
    (job / CHECKPOINT_FILE).unlink()
    (job / "traceback.txt").write_text("Traceback of the old failure")
    result = run_job(tiny_cfg(data_root, "eval_batch_size=4"), job, progress=False)
    assert result["status"] == "ok"
    assert not (job / "traceback.txt").exists()  # no stale traceback beside an ok result


def test_a_refused_job_fails_the_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    report = SweepReport(enabled=False)
    (sweep / "old").mkdir(parents=True)
    (sweep / "old" / "refused.json").write_text("{}")  # refused in an earlier run
    os.utime(sweep / "old" / "refused.json", (time.time() - 60, time.time() - 60))
    report.on_multirun_start(config=None)
    (sweep / "a").mkdir()
    (sweep / "a" / "result.json").write_text(json.dumps({"status": "ok"}))
    config = type("C", (), {"hydra": type("H", (), {"sweep": type("S", (), {"dir": sweep})})})
    report.on_multirun_end(config=config)
    assert SweepReport.last_failed == 0
    (sweep / "a" / "refused.json").write_text("{}")
    report.on_multirun_end(config=config)
    assert SweepReport.last_failed == 1


# --- lossless resume, force, divergence ---------------------------------------------------


def test_a_job_resumed_after_its_final_checkpoint_reports_the_whole_training(job, data_root):
    """SIGKILL between the final checkpoint and result.json, then the same command."""
    first = read_result(job)
    (job / "result.json").unlink()
    result = run_job(tiny_cfg(data_root), job, progress=False)
    assert result["status"] == "ok" and result["resumed"] is True
    for key in (
        "train_iters",
        "train_seconds",
        "final_loss",
        "train_images_per_second",
        "train_history",
        "train_segments",
        "map",
    ):
        assert result[key] == first[key], key
    assert first["train_seconds"] > 0 and len(first["train_history"]) == 2
    assert first["train_images_per_second"] == pytest.approx(4 / first["train_seconds"])
    assert first["resumed"] is False and len(first["train_segments"]) == 1


class _Crash(RuntimeError):
    pass


class _Crashing:
    """``loader``, epoch after epoch, until ``after`` batches were served; then it raises (a
    killed process)."""

    def __init__(self, loader, after: int) -> None:
        self.loader, self.left = loader, after

    def __iter__(self):
        for batch in self.loader:
            if self.left == 0:
                raise _Crash
            self.left -= 1
            yield batch


def test_a_training_resumed_mid_way_reports_every_segment(tmp_path):
    """4 steps with a checkpoint at 2, killed in step 3, resumed: the history of the whole
    training equals an uninterrupted run's (4 images, 2 per batch: the crash falls on an epoch
    boundary, so the resumed run sees the same batches)."""
    loader = DataLoader(toy_dataset(), batch_size=2, collate_fn=collate)
    cfg = toy_train_cfg(4)
    cfg.resume, cfg.checkpoint_every = True, 2
    identity = ("f" * 64, {"toy": 1})
    whole = train(toy_model(), loader, cfg, CPU, tmp_path / "whole", progress=False)

    with pytest.raises(_Crash):
        train(
            toy_model(),
            _Crashing(loader, 2),
            cfg,
            CPU,
            tmp_path / "job",
            progress=False,
            identity=identity,
        )
    first = load_checkpoint(tmp_path / "job" / CHECKPOINT_FILE)
    assert first["iter"] == 2 and len(first["totals"]["segments"]) == 1
    tr = train(toy_model(), loader, cfg, CPU, tmp_path / "job", progress=False, identity=identity)

    assert tr.resumed and tr.iters == 4
    assert [s["start_iter"] for s in tr.segments] == [0, 2]
    assert [s["end_iter"] for s in tr.segments] == [2, 4]
    assert tr.seconds == pytest.approx(sum(s["seconds"] for s in tr.segments))
    assert tr.seconds > tr.segments[1]["seconds"]  # not only the last segment's time
    assert tr.images_per_second == pytest.approx(8 / tr.seconds)
    assert [h["iter"] for h in tr.history] == [1, 2, 3, 4]
    for got, want in zip(tr.history, whole.history, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert tr.final_loss == pytest.approx(whole.final_loss, rel=1e-5)


def test_force_retrains_from_scratch(job, data_root):
    first = read_result(job)
    result = run_job(tiny_cfg(data_root, "force=true"), job, progress=False)
    assert result["status"] == "ok" and result["resumed"] is False
    assert result["train_iters"] == 2 and len(result["train_history"]) == 2
    assert [(s["start_iter"], s["end_iter"]) for s in result["train_segments"]] == [(0, 2)]
    assert result["train_seconds"] > 0 and result["train_seconds"] != first["train_seconds"]


def test_weights_turned_nan_by_the_last_step_fail_the_job(tmp_path, data_root):
    """The loss of every step is finite; the last step leaves a NaN weight (issue 13: the job
    said ok with map 0)."""
    cfg = tiny_cfg(
        data_root,
        f"train.optimizer._target_={NAN_OPTIMIZER}",
        "~train.optimizer.weight_decay",
        "+train.optimizer.nan_at=2",
    )
    result = run_job(cfg, tmp_path / "job", progress=False)
    assert result["status"] == "failed"
    assert result["error"].startswith(
        "TrainingDiverged: weights became NaN or infinite at the end of training (iteration 2)"
    )
    assert not (tmp_path / "job" / CHECKPOINT_FILE).exists()  # no NaN checkpoint to resume
    assert "TrainingDiverged" in (tmp_path / "job" / "traceback.txt").read_text()


def test_a_nan_checkpoint_is_never_written_nor_loaded(tmp_path):
    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"at iteration 3: head\.weight \(1 of 4\)"):
        save_checkpoint(tmp_path / "c.pt", model, opt, sched, 3)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one
    torch.save({"model": model.state_dict(), "iter": 3}, tmp_path / "c.pt")
    with pytest.raises(TrainingDiverged, match="head.weight"):
        load_checkpoint(tmp_path / "c.pt")
