"""The README's main job, end to end in the tiny budget."""

import json
import subprocess
import sys

from .cli import REPO


def test_translation_demo_writes_table_results_and_plot(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples/translation/demo_multi30k.py"), "--budget", "tiny",
         "--threads", "1", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    table = proc.stdout[proc.stdout.index("run      | alpha | seed"):]
    assert "baseline | 0     | 1" in table and "rdrop    | 5     | 1" in table
    assert "R-Drop - baseline, test_2016_flickr sacreBLEU" in table

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["budget"] == "tiny" and set(results["runs"]) == {"baseline", "rdrop"}
    for arm in results["runs"].values():
        (seed,) = arm["seeds"]
        assert set(seed["test"]) == {"test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"}
        for score in seed["test"].values():
            assert 0.0 <= score["bleu"] <= 100.0 and score["signature"].startswith("nrefs:1")
        assert isinstance(seed["best_valid_loss"], float)
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
