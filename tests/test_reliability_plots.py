"""scripts/fairseq_logs.py on a demo-style results.json that lists real
baseline and R-Drop training logs: both runs on one PNG."""

import json
import subprocess
import sys

import pytest

from rdrop_experiments.results import runs_of_results

from .helpers.fairseq_runs import COMMON_TRAIN, REPO, TINY_TRANSFORMER, run_tool

PLOTTER = REPO / "scripts" / "fairseq_logs.py"


@pytest.fixture(scope="module")
def results_file(multi30k_bin):
    """Baseline and R-Drop, 4 updates each, listed as the demos list them."""
    results = {"runs": {}}
    for name, alpha in (("baseline", 0), ("rdrop", 5)):
        save = multi30k_bin / f"plot-{name}"
        save.mkdir()
        run_tool(
            "fairseq-train", multi30k_bin / "bin", "--task", "translation", *TINY_TRANSFORMER, *COMMON_TRAIN,
            "--criterion", "label_smoothed_cross_entropy_rdrop", "--rdrop-alpha", alpha, "--label-smoothing", 0.1,
            "--max-tokens", 1024, "--max-update", 4, "--log-interval", 1, "--no-save",
            "--save-dir", save, "--log-file", save / "train.log",
        )
        results["runs"][name] = {"alpha": alpha, "seeds": [{"seed": 3, "log": str(save / "train.log")}]}
    path = multi30k_bin / "results.json"
    path.write_text(json.dumps(results))
    return path


def plot(*args):
    return subprocess.run(
        [sys.executable, str(PLOTTER), "plot", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_results_file_gives_every_runs_training_and_validation_curves(results_file):
    runs = runs_of_results(results_file)
    assert list(runs) == ["baseline seed 3", "rdrop seed 3"]
    for run in runs.values():
        assert run["train"]["updates"] == [1, 2, 3, 4] and all(v > 0 for v in run["train"]["loss"])
        assert run["valid"]["updates"] == [4] and run["valid"]["loss"][0] > 0
    assert all(v > 0 for v in runs["rdrop seed 3"]["train"]["kl_loss"])
    assert runs["baseline seed 3"]["train"]["kl_loss"] == [None] * 4


def test_plot_of_a_results_file_writes_one_png(results_file, tmp_path):
    out = tmp_path / "curves.png"
    proc = plot("--out", out, results_file)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_a_results_file_listing_a_missing_log_is_rejected_naming_it(results_file, tmp_path):
    broken = json.loads(results_file.read_text())
    broken["runs"]["rdrop"]["seeds"][0]["log"] = str(tmp_path / "gone.log")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(broken))
    proc = plot("--out", tmp_path / "x.png", path)
    assert proc.returncode == 2 and "gone.log" in proc.stderr and "does not exist" in proc.stderr
