"""The benchmark runs end to end at small sizes and reports what it measured.

Speed and memory targets are checked by running the benchmark itself, never here.
"""

import argparse
import json
import subprocess
import sys

import pytest
import torch

from rdrop_experiments import benchmark_kl, benchmark_recipes, benchmark_step

from .helpers.fairseq_runs import REPO

# What fairseq's and hydra's logging and Python's warnings look like on a console.
LIBRARY_MARKERS = ("| INFO |", "| WARNING |", "INFO:", "DEBUG:", "WARNING", "UserWarning", "FutureWarning",
                   "version_base", "deprecat")
# The first lines of the report's tables.
REPORT_HEADINGS = ("KL term alone", "Training step on Multi30k", "Recipes' models: ")


def run_benchmark(*args, timeout):
    """The benchmark's command line run as a user runs it, stdout and stderr together: its console."""
    return subprocess.run([sys.executable, str(REPO / "scripts/benchmark_rdrop.py"), *map(str, args)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def not_the_benchmarks_own(console):
    """The console's lines that are neither the benchmark's progress (``[benchmark] ...``)
    nor its report (headings and table rows), or that look like a library's messages."""
    return [line for line in console.splitlines() if line.strip() and (
        any(marker in line for marker in LIBRARY_MARKERS)
        or not (line.startswith(("[benchmark] ", *REPORT_HEADINGS)) or " | " in line))]


def test_the_console_shows_progress_and_tables_and_the_log_file_the_rest(tmp_path):
    # the quickest run that has both: fairseq's Trainer in this process, and cases in processes of their own
    out = tmp_path / "quickest.json"
    proc = run_benchmark("--quick", "--parts", "kl", "recipes", "--recipe-models", "iwslt14", "--kl-sizes", "256x1000",
                         "--kl-reps", "1", "--batches", "1", "--step-reps", "1", "--workdir", tmp_path / "work",
                         "--out", out, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert not_the_benchmarks_own(proc.stdout) == []
    log_path = tmp_path / "work" / "quickest.log"
    assert proc.stdout.splitlines()[0] == (
        f"[benchmark] fairseq's, hydra's and torch's messages, and each case's process output, go to {log_path}")
    assert "KL term alone" in proc.stdout and "Recipes' models: iwslt14" in proc.stdout
    assert "[benchmark] iwslt14: round 2/2 done" in proc.stdout and f"[benchmark] wrote {out}" in proc.stdout
    assert set(json.loads(out.read_text())) >= {"kl", "kl_ratios", "recipes"}
    log = log_path.read_text()
    # hydra's warnings, fairseq's logging, and each KL case's process
    assert "UserWarning" in log and "The version_base parameter is not specified" in log
    assert "| INFO | fairseq.trainer | detected shared parameter" in log
    assert log.count(" --child ") == 3 and log.count('"part": "kl"') == 3


def test_benchmark_quick_run_prints_both_tables_and_writes_every_measurement(tmp_path):
    out = tmp_path / "benchmark.json"
    proc = run_benchmark("--quick", "--kl-reps", "1", "--batches", "2", "--step-reps", "1", "--workdir", tmp_path,
                         "--out", out, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "KL term alone" in proc.stdout and "Training step on Multi30k" in proc.stdout
    assert not_the_benchmarks_own(proc.stdout) == []
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
    assert set(step["arms"]) == {"baseline", "two-passes", "ours", "upstream", "baseline-checkpointed",
                                 "ours-checkpointed", "ours-update-freq-2"}
    for arm in step["arms"].values():
        assert len(arm["times"]) == 2 and arm["target_tokens_per_s"] > 0 and arm["peak_mib"] > 0
    # --quick has one encoder and one decoder layer, each wrapped by fairseq's checkpoint wrapper
    assert {name: arm["checkpointed_layers"] for name, arm in step["arms"].items() if arm["checkpointed_layers"]} == {
        "baseline-checkpointed": 2, "ours-checkpointed": 2}
    assert set(step["ratios"]) >= {
        "ours/baseline step", "ours/upstream step", "ours/upstream peak RSS",
        "ours-checkpointed/baseline step", "ours-checkpointed/baseline peak RSS",
        "ours-checkpointed/baseline extra peak", "ours-checkpointed/ours step", "ours-checkpointed/ours peak RSS",
        "ours-update-freq-2/ours step", "ours-update-freq-2/ours peak RSS",
    }


def test_the_kl_table_has_an_mbart_sized_vocabulary_and_cases_can_be_chosen():
    assert (1024, 250000) in benchmark_kl.KL_SIZES
    assert benchmark_kl.kl_size("1024x250000") == (1024, 250000)
    with pytest.raises(argparse.ArgumentTypeError, match="expected TOKENSxVOCAB such as 1024x250000, got '1024'"):
        benchmark_kl.kl_size("1024")


def test_the_update_freq_2_arm_takes_every_sentence_of_the_batch_once_in_two_halves():
    from .helpers.tiny_fairseq import make_sample, make_task

    task = make_task()
    sample = make_sample(task, batch_size=5, seed=3)
    pad = task.target_dictionary.pad()
    first, second = benchmark_step.halves(sample, pad)
    assert (first["nsentences"], second["nsentences"]) == (3, 2)
    assert first["ntokens"] + second["ntokens"] == sample["ntokens"]
    for part in (first, second):
        assert part["ntokens"] == int(part["target"].ne(pad).sum())
    for key in ("src_tokens", "src_lengths", "prev_output_tokens"):
        assert torch.equal(torch.cat([first["net_input"][key], second["net_input"][key]]), sample["net_input"][key])
    assert torch.equal(torch.cat([first["target"], second["target"]]), sample["target"])
    assert torch.equal(torch.cat([first["id"], second["id"]]), sample["id"])


def test_the_recipes_part_trains_each_recipes_architecture_in_every_arm_side_by_side(tmp_path):
    # --quick on the CPU: the code path of --device cuda, with the models shrunk and 128-token batches
    out = tmp_path / "recipes.json"
    proc = run_benchmark("--quick", "--parts", "recipes", "--workdir", tmp_path, "--out", out, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Recipes' models: cnn_dm, bart_large" in proc.stdout
    assert not_the_benchmarks_own(proc.stdout) == []
    recipes = json.loads(out.read_text())["recipes"]
    assert (recipes["precision"], recipes["batches"], recipes["reps"]) == ("fp32", 2, 2)
    assert {name: (m["arch"], m["vocab"]) for name, m in recipes["models"].items()} == {
        "iwslt14": ("transformer_iwslt_de_en", 10152), "wmt14": ("transformer_vaswani_wmt_en_de_big", 32768),
        "cnn_dm": ("bart_large", 50264)}
    for model in recipes["models"].values():
        assert set(model["arms"]) == {"baseline", "two-passes", "ours", "upstream", "ours-checkpointed"}
        for arm in model["arms"].values():
            assert len(arm["times"]) == 4 and arm["target_tokens_per_s"] > 0
            assert arm["peak_mib"] is None  # measured on CUDA only
        # one encoder and one decoder layer, each wrapped by fairseq's checkpoint wrapper
        assert {name: arm["checkpointed_layers"] for name, arm in model["arms"].items()
                if arm["checkpointed_layers"]} == {"ours-checkpointed": 2}
        assert set(model["ratios"]) == {"ours/baseline step", "two-passes/baseline step", "ours/two-passes step",
                                        "ours/upstream step", "ours-checkpointed/ours step",
                                        "ours-checkpointed/baseline step"}


def test_the_recipes_batches_fill_each_recipes_max_tokens_with_its_dictionarys_tokens():
    sizes = {}
    for name, spec in benchmark_recipes.RECIPE_MODELS.items():
        max_tokens, source_len, target_len, shrink = benchmark_recipes.recipe_setup(name, "cuda", quick=True)
        assert (max_tokens, shrink) == (spec["max_tokens"], [])  # --quick on a GPU: the recipes' own sizes
        dictionary = benchmark_recipes.recipe_dictionary(spec["vocab"])
        [batch] = benchmark_recipes.random_batches(dictionary, 1, max_tokens, source_len, target_len, "cpu")
        tokens = batch["net_input"]["src_tokens"]
        assert len(dictionary) == spec["vocab"] and int(tokens.max()) < spec["vocab"]
        assert int(tokens[:, :-1].min()) >= dictionary.nspecial and bool((tokens[:, -1] == dictionary.eos()).all())
        assert torch.equal(batch["net_input"]["prev_output_tokens"][:, 1:], batch["target"][:, :-1])
        sizes[name] = (tokens.numel(), batch["ntokens"])
    # source x target tokens per batch: 128 sentences of 32 + 32; one 1,024-token article and its summary
    assert sizes == {"iwslt14": (4096, 4096), "wmt14": (4096, 4096), "cnn_dm": (1024, 96)}
