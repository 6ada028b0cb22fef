"""The README's main job, end to end in the tiny budget."""

import json
import subprocess
import sys

import pytest

from .cli import REPO


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """(console output, work folder) of the demo in the tiny budget, seed 4."""
    work = tmp_path_factory.mktemp("multi30k-demo")
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples/translation/demo_multi30k.py"), "--budget", "tiny",
         "--seeds", "4", "--workdir", str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout, work


def test_translation_demo_writes_table_results_and_plot(tiny_demo):
    out, tmp_path = tiny_demo
    table = out[out.index("run         | alpha | updates | seed"):]
    assert "baseline    | 0     | 30      | 4" in table and "rdrop       | 5     | 30      | 4" in table
    assert "baseline_2x | 0     | 60      | 4" in table  # the baseline with R-Drop's compute
    assert "rdrop - baseline, sacreBLEU, paired by seed:\n  test_2016_flickr: " in table
    assert "rdrop - baseline_2x, sacreBLEU, paired by seed:\n  test_2016_flickr: " in table

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["budget"] == "tiny" and set(results["runs"]) == {"baseline", "rdrop", "baseline_2x"}
    assert [arm["max_update"] for arm in results["runs"].values()] == [30, 30, 60]
    for arm in results["runs"].values():
        (seed,) = arm["seeds"]
        assert set(seed["test"]) == {"test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"}
        for score in seed["test"].values():
            assert 0.0 <= score["bleu"] <= 100.0 and score["signature"].startswith("nrefs:1")
        assert isinstance(seed["best_valid_loss"], float)
    gain = results["gains"]["rdrop - baseline"]["test_2016_flickr"]
    runs = results["runs"]
    expected = runs["rdrop"]["seeds"][0]["test"]["test_2016_flickr"]["bleu"] - \
        runs["baseline"]["seeds"][0]["test"]["test_2016_flickr"]["bleu"]
    assert abs(gain["mean"] - expected) < 1e-9 and gain["sd"] is None
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_translation_demo_shows_progress_bars_and_keeps_fairseq_output_in_run_logs(tiny_demo):
    out, tmp_path = tiny_demo
    for arm in ("baseline", "rdrop"):
        (run_dir,) = tmp_path.glob(f"{arm}-alpha*-seed4-30-*")
        log_file = run_dir / "train.log"
        assert f"{arm} seed 4: training, full log in {log_file}" in out
        assert f"{arm} seed 4: 30 updates in " in out
        assert f"{arm} seed 4:" in out and "/30 [" in out  # the progress bar
        logged = log_file.read_text()
        assert "fairseq_cli.train | done training" in logged and '"valid_num_updates": "30"' in logged
        assert (run_dir / "generate-test.txt").read_text().count("\nD-") > 0
    assert "| INFO |" not in out and "fairseq_cli" not in out
