"""The SciTLDR summarization demo, end to end in the tiny budget."""

import json
import subprocess
import sys

from .helpers.demo_commands import logged_commands
from .helpers.fairseq_runs import REPO

RECORDED = json.loads((REPO / "tests" / "data" / "demo_commands.json").read_text())["tiny_runs_logged"]


def test_scitldr_demo_writes_rouge_table_results_and_plot(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples/summarization/demo_scitldr.py"), "--budget", "tiny",
         "--seeds", "1", "2", "--threads", "1", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    table = proc.stdout[proc.stdout.index("run      | alpha | updates | seed | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum"):]
    for row in ("baseline | 0     | 20      | 1", "baseline | 0     | 20      | mean", "baseline | 0     | 20      | sd",
                "rdrop    | 5     | 20      | 2", "rdrop    | 5     | 20      | mean", "rdrop    | 5     | 20      | sd"):
        assert row in table
    assert "/40 " in table
    assert "rdrop - baseline, ROUGE F1, paired by seed:\n  test ROUGE-L: " in table
    assert "(2 seeds; sd " in table

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["budget"] == "tiny" and set(results["runs"]) == {"baseline", "rdrop"}
    assert results["runs"]["rdrop"]["alpha"] == 5.0 and results["runs"]["baseline"]["alpha"] == 0.0
    for name, arm in results["runs"].items():
        assert [seed["seed"] for seed in arm["seeds"]] == [1, 2]
        for seed in arm["seeds"]:
            assert set(seed["test_rouge"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
            assert all(0.0 <= value <= 100.0 for value in seed["test_rouge"].values())
            assert isinstance(seed["best_valid_loss"], float)
            assert seed["test_abstracts"] == 40 and 1 <= seed["distinct_summaries"] <= 40
    # Paired by seed: the gain of each seed, and the standard deviation of two values is |a - b| / sqrt(2).
    rouge_l = {name: [seed["test_rouge"]["rougeL"] for seed in arm["seeds"]] for name, arm in results["runs"].items()}
    diffs = [r - b for r, b in zip(rouge_l["rdrop"], rouge_l["baseline"])]
    gain = results["gains"]["rdrop - baseline"]["test ROUGE-L"]
    assert [gain["per_seed"][str(seed)] for seed in (1, 2)] == [round(d, 4) for d in diffs]
    assert abs(gain["sd"] - abs(diffs[0] - diffs[1]) / 2 ** 0.5) <= 1e-3
    # One summary per test abstract of the tiny budget's 40, in order.
    for name in ("baseline", "rdrop"):
        run_dirs = list(tmp_path.glob(f"{name}-*"))
        assert len(run_dirs) == 2
        for run_dir in run_dirs:
            assert len((run_dir / "test.hypo").read_text(encoding="utf-8").splitlines()) == 40
    # The fairseq commands the former code ran (tests/data/demo_commands.json).
    assert logged_commands(tmp_path) == RECORDED["scitldr"]
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
