"""The WikiText-2 language-model demo, end to end in the tiny budget."""

import json
import subprocess
import sys

from .helpers.demo_commands import logged_commands
from .helpers.fairseq_runs import REPO, train_records

RECORDED = json.loads((REPO / "tests" / "data" / "demo_commands.json").read_text())["tiny_runs_logged"]


def test_language_model_demo_writes_table_results_and_plot(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples/language_model/demo_wikitext2.py"), "--budget", "tiny",
         "--threads", "1", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    table = proc.stdout[proc.stdout.index("run      | alpha | updates | seed | valid ppl | test ppl"):]
    assert "baseline | 0     | 20      | 1" in table and "rdrop    | 1     | 20      | 1" in table
    assert "rdrop - baseline, perplexity, paired by seed:\n  test perplexity: " in table

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["budget"] == "tiny" and set(results["runs"]) == {"baseline", "rdrop"}
    for arm in results["runs"].values():
        (seed,) = arm["seeds"]
        # 20 updates on a 300-piece vocabulary: near uniform yet; ppl = 2^loss
        for split in ("valid", "test"):
            score = seed["eval"][split]
            assert 1.0 < score["ppl"] < 1000 and abs(score["ppl"] - 2 ** score["loss_bits"]) < 0.01 * score["ppl"]
        assert seed["best_update"] in (10, 20) and isinstance(seed["best_valid_loss"], float)
    (rdrop_dir,) = tmp_path.glob("rdrop-*")
    assert train_records(rdrop_dir / "train.log", "train")[-1]["train_kl_loss"] > 0
    # The fairseq commands the former code ran (tests/data/demo_commands.json).
    assert logged_commands(tmp_path) == RECORDED["wikitext2"]
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
