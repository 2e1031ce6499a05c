"""Scale-out end to end, in subprocesses as a user runs it (CPU, tiny images, few steps).

* ``detbench ... train.devices=2``: two gloo DDP ranks started by the job, then one
  evaluation and one timing run, to a valid result.json with ``world_size`` 2.
* ``detbench -m hydra/launcher=submitit_local ...``: a two-job sweep through Hydra's submitit
  launcher (jobs run concurrently as local processes) to completed results, aggregated by
  ``detbench-report``; the two jobs' measurement phases do not overlap (timing lock: the test
  holds it until both jobs wait for it).
* The launcher presets under sweeps/hydra/launcher/ compose (tests/test_cluster_*.py run
  them on real Ray and SLURM clusters), and job folders are absolute for jobs started in
  another working directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module

import benchmark
import models
import sweeps
from benchmark.device import Device
from benchmark.results import git_sha
from benchmark.timing_lock import exclusive_device

pytestmark = pytest.mark.slow

TINY = [
    "meta_arch=ssd",
    "extractor=mobilenet_v3_small",
    "data.image_size=64",
    "data.gen_size=64",
    "data.num_train=8",
    "data.num_val=4",
    "train.batch_size=2",
    "train.warmup_iters=1",
    "train.log_every=1",
    "eval_batch_size=4",
    "progress=false",
    "meta_arch.score_threshold=0.05",
    "meta_arch.pre_nms_topk=100",
    "meta_arch.max_detections=50",
    "bench.warmup=1",
    "bench.num_images=2",
    "bench.enabled.throughput=false",
    "bench.enabled.roofline=false",
    "bench.enabled.memory=false",
]


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DETBENCH_CACHE": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
        "HYDRA_FULL_ERROR": "1",
    }


def _command() -> list[str]:
    script = Path(sys.executable).with_name("detbench")  # the console script users run
    return [str(script)] if script.exists() else [sys.executable, "-m", "benchmark"]


def _run(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_command(), *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _start(tmp_path: Path, out, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*_command(), *args], cwd=tmp_path, env=_env(tmp_path), stdout=out, stderr=subprocess.STDOUT
    )


def test_two_rank_job_end_to_end(tmp_path):
    done = _run(
        tmp_path,
        *TINY,
        "train.devices=2",
        "train.max_iters=2",
        "num_threads=2",  # split over the ranks: one thread each
        f"results_root={tmp_path / 'results'}",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = (tmp_path / "results" / "runs").glob("*/result.json")
    r = json.loads(path.read_text())
    assert r["status"] == "ok", r["error"]
    assert r["world_size"] == 2 and r["dist_backend"] == "gloo"
    assert r["total_batch_size"] == 4 and r["reference_batch_size"] == 2
    # Linear scaling from one rank's batch: twice the lr, the same warm-up steps.
    assert r["lr_scale"] == 2.0 and r["effective_warmup_iters"] == 1
    assert r["effective_lr"] == pytest.approx(2 * r["config"]["train"]["optimizer"]["lr"])
    assert r["train_iters"] == 2 and len(r["train_history"]) == 2
    assert r["train_history"][-1]["lr"] == pytest.approx(r["effective_lr"])
    assert r["map"] is not None and r["latency_ms"] > 0  # evaluated and timed once, here
    assert r["timing_exclusive"] is True
    assert "training on 2 cpu ranks (gloo)" in done.stdout + done.stderr
    assert (path.parent / "checkpoint.pt").is_file()  # written by rank 0


def _jobs_waiting_for_the_lock(sweep: Path) -> int:
    """Submitit jobs whose log says they found the timing lock taken."""
    return sum(
        any(
            "waiting for the timing lock" in f.read_text(errors="replace")
            for f in job.glob("*_log.*")
        )
        for job in (sweep / ".submitit").glob("*")
        if job.is_dir()
    )


def test_submitit_local_sweep_and_report(tmp_path):
    sweep = tmp_path / "results" / "local"
    lock_dir = tmp_path / "locks"
    log = tmp_path / "sweep.log"
    # The two jobs run concurrently; to check that they measure one at a time whatever their
    # speed, the test holds the timing lock until both have reported waiting for it (an event
    # in their logs, not a sleep), then lets them go.
    with exclusive_device(Device.from_spec("cpu"), lock_dir), log.open("w") as out:
        proc = _start(
            tmp_path,
            out,
            "-m",
            "hydra/launcher=submitit_local",
            *TINY,
            "train.max_iters=1",
            "seed=0,1",
            "num_threads=1",
            "sweep_name=local",
            f"results_root={tmp_path / 'results'}",
            f"timing_lock_dir={lock_dir}",
            # the held lock must stop their measurements, not their training (the work gate
            # would pause it, and they would never reach the lock)
            "timing_pause_work=false",
            "~hydra.callbacks.report",  # aggregated below by detbench-report, as across machines
        )
        deadline = time.monotonic() + 600
        while _jobs_waiting_for_the_lock(sweep) < 2:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)  # polling for the event; its timing does not matter
    assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}
    assert len(results) == 2, sorted(results)
    assert all(r["status"] == "ok" for r in results.values())
    assert all(r["timing_exclusive"] and r["timing_lock_wait_s"] > 0 for r in results.values())
    spans = sorted((r["measure_started_at"], r["measure_ended_at"]) for r in results.values())
    assert spans[0][1] <= spans[1][0], spans  # exclusive timing between concurrent jobs

    script = Path(sys.executable).with_name("detbench-report")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "benchmark.report.cli"]
    report = subprocess.run(
        [*command, str(sweep)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert (sweep / "report.html").is_file()
    table = pd.read_csv(sweep / "results.csv")
    assert len(table) == 2 and set(table["status"]) == {"ok"}
    assert (table["world_size"] == 1).all() and table["timing_exclusive"].all()


LAUNCHERS = sorted(
    p.stem for p in (Path(__file__).resolve().parents[1] / "sweeps/hydra/launcher").glob("*.yaml")
)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_presets_compose(name):
    plugin = "hydra_ray_launcher" if name.startswith("ray") else "hydra_submitit_launcher"
    if plugin == "hydra_ray_launcher":  # only the optional cluster extra brings Ray
        pytest.importorskip(f"hydra_plugins.{plugin}", reason="pip install -e '.[cluster]'")
    with initialize_config_module("sweeps", version_base="1.3"):
        cfg = compose(
            "config", [f"hydra/launcher={name}", "train.devices=8"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    if plugin == "hydra_ray_launcher":
        assert launcher._target_.endswith("RayLauncher")
        init, remote = launcher.ray.init, launcher.ray.remote
        # An existing cluster (RAY_ADDRESS wins over auto), whose object store Ray refuses to
        # resize: the key must be there and null, or hydra-ray-launcher sets 75 MB.
        assert init.address == "auto" and "object_store_memory" in init
        assert init.object_store_memory is None
        # The workers get the code this process imports, whatever their node has installed.
        shipped = [Path(p) for p in init.runtime_env.py_modules]
        assert shipped == [Path(m.__file__).resolve().parent for m in (benchmark, models, sweeps)]
        assert init.runtime_env.env_vars["DETBENCH_GIT_SHA"] == (git_sha() or "")
        assert remote.max_calls == 1 and remote.get("num_gpus", 0) == int(name == "ray_1gpu")
        return
    assert launcher._target_.endswith("SlurmLauncher") and launcher.tasks_per_node == 1
    assert launcher.gpus_per_node == (8 if name == "slurm_multi_gpu" else 1)


def test_job_folders_are_absolute_for_jobs_started_elsewhere(tmp_path, monkeypatch):
    """A relative results_root names the folder under the one detbench was started in, for
    jobs whose working directory differs (a Ray worker starts where its node's `ray start`
    ran): Hydra ships the run and sweep folders to the jobs resolved against
    ``hydra.runtime.cwd``, the submitting command's folder."""
    monkeypatch.chdir(tmp_path)
    with initialize_config_module("sweeps", version_base="1.3"):
        relative = compose("config", ["meta_arch=rfcn"], return_hydra_config=True)
        absolute = compose(
            "config", ["results_root=/data/r", "sweep_name=s"], return_hydra_config=True
        )
    monkeypatch.chdir("/")  # a job's working directory: it must not matter
    assert relative.hydra.sweep.dir == str(tmp_path / "results" / "default")
    assert relative.hydra.run.dir == str(tmp_path / "results" / "runs" / "meta_arch=rfcn")
    assert absolute.hydra.sweep.dir == "/data/r/s"
