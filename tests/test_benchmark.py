"""The benchmark runs end to end at small sizes and reports what it measured.

Speed and memory targets are checked by running the benchmark itself, never here.
"""

import argparse
import json
import subprocess
import sys

import pytest

from .cli import REPO


def test_benchmark_quick_run_prints_both_tables_and_writes_every_measurement(tmp_path):
    out = tmp_path / "benchmark.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/benchmark_rdrop.py"), "--quick", "--kl-reps", "1", "--batches", "2",
         "--step-reps", "1", "--workdir", str(tmp_path), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "KL term alone" in proc.stdout and "Training step on Multi30k" in proc.stdout
    results = json.loads(out.read_text())
    assert {(r["tokens"], r["vocab"], r["impl"]) for r in results["kl"]} == {
        (n, v, impl) for n, v in [(256, 1000), (512, 4000)] for impl in ("official", "ours", "ours+lsm")
    }
    for row in results["kl"]:
        assert len(row["times"]) == 1 and row["median_s"] > 0 and row["peak_extra_mib"] >= 0
    # The official formula keeps log-probabilities and probabilities of the
    # doubled batch: at 512 x 2 x 4000 floats that alone is > 30 MiB above ours.
    official, ours = (next(r for r in results["kl"] if r["tokens"] == 512 and r["impl"] == i)
                      for i in ("official", "ours"))
    assert official["peak_extra_mib"] > ours["peak_extra_mib"] + 30
    step = results["step"]
    assert set(step["arms"]) == {"baseline", "two-passes", "ours", "upstream"}
    for arm in step["arms"].values():
        assert len(arm["times"]) == 2 and arm["target_tokens_per_s"] > 0 and arm["peak_mib"] > 0
    assert set(step["ratios"]) >= {"ours/baseline step", "ours/upstream step", "ours/upstream peak RSS"}


def test_the_kl_table_has_an_mbart_sized_vocabulary_and_cases_can_be_chosen():
    from scripts import benchmark_rdrop

    assert (1024, 250000) in benchmark_rdrop.KL_SIZES
    assert benchmark_rdrop.kl_size("1024x250000") == (1024, 250000)
    with pytest.raises(argparse.ArgumentTypeError, match="expected TOKENSxVOCAB such as 1024x250000, got '1024'"):
        benchmark_rdrop.kl_size("1024")
