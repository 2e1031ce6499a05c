"""Job folder names derived from overrides."""

import os
import subprocess
import sys
from pathlib import Path

from benchmark.resolvers import MAX_DIR_NAME, job_dir_name

ROOT = Path(__file__).resolve().parents[1]


def test_plain_overrides_stay_readable():
    assert job_dir_name("extractor=resnet18,meta_arch=ssd") == "extractor=resnet18,meta_arch=ssd"
    assert job_dir_name("") == "default"


def test_path_separators_do_not_nest_folders():
    assert "/" not in job_dir_name("data.root=/data/voc/VOC2007")


def test_long_names_are_shortened_stably_and_uniquely():
    a = ",".join(f"bench.enabled.k{i}=false" for i in range(40))
    b = a + ",seed=1"
    na, nb = job_dir_name(a), job_dir_name(b)
    assert len(na.encode()) <= MAX_DIR_NAME and len(nb.encode()) <= MAX_DIR_NAME
    assert na == job_dir_name(a) and na != nb


def test_composing_resolves_job_folders_without_the_app(tmp_path):
    """Tools and tests compose the config without importing the Hydra app for its side effect:
    importing the config package registers the resolver (a fresh interpreter, nothing else)."""
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_module\n"
        "with initialize_config_module('sweeps', version_base='1.3'):\n"
        "    cfg = compose('config', overrides=['num_threads=2', 'data.root=/d/x'],"
        " return_hydra_config=True)\n"
        "print(cfg.hydra.run.dir, cfg.hydra.sweep.subdir, 'benchmark.app' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir, subdir, app_imported = out.stdout.split()
    # results_root is relative: made absolute against the folder the command started in
    assert run_dir == f"{tmp_path}/results/runs/data.root=_d_x,num_threads=2"
    assert subdir == "data.root=_d_x,num_threads=2" and app_imported == "False"
