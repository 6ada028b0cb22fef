"""Offline checks of the WikiText-103 recipes in examples/language_model/.

WikiText-103 cannot be downloaded here, so the preparation runs on a zip laid
out like wikitext-103-v1.zip holding a slice of the shipped WikiText-2 (the same
format); the training commands are checked through a stand-in fairseq-train
that prints its arguments, and end to end (slow) on tiny models.
"""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .helpers.fairseq_runs import REPO, WIKITEXT2, assert_script_fails_fast, assert_shell_script_parses_and_is_strict, head_lines

EXAMPLES = REPO / "examples" / "language_model"
SCRIPTS = ["prepare_wikitext103.sh", "train_wikitext103.sh", "evaluate_wikitext103.sh", "run_demo.sh"]
MISSING = "/nonexistent/rdrop-data"
ECHO_TRAIN = f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n"


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def _bash(script, *args, **env):
    return subprocess.run(["bash", str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True,
                          env=_env(**env))


def _flag(args, name):
    return args[args.index(name) + 1]


def _wikitext_zip(folder, train_lines=400, eval_lines=100):
    """A zip laid out as wikitext-103-v1.zip, with the first lines of WikiText-2."""
    archive = folder / "wikitext-103-v1.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for split, lines in (("train", train_lines), ("valid", eval_lines), ("test", eval_lines)):
            name = "wiki.train.tokens.gz" if split == "train" else f"wiki.{split}.tokens"
            text = "\n".join(head_lines(WIKITEXT2 / name, lines)) + "\n"
            z.writestr(f"wikitext-103/wiki.{split}.tokens", text)
    return archive


@pytest.fixture(scope="module")
def wikitext_bin(tmp_path_factory):
    root = tmp_path_factory.mktemp("wikitext103")
    r = _bash("prepare_wikitext103.sh", "--zip", _wikitext_zip(root), ORIG=root / "orig", DATA=root / "bin",
              WORKERS="1")
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "bin", r


def _empty_data_bin(folder):
    folder.mkdir()
    for name in ("dict.txt", "train.bin", "valid.bin"):
        (folder / name).write_text("")
    return folder


def _train_command_line(tmp_path, model, **env):
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "fairseq-train").write_text(ECHO_TRAIN)
    (fake / "fairseq-train").chmod(0o755)
    e = dict(DATA=str(_empty_data_bin(tmp_path / "data")), SAVE_DIR=str(tmp_path / "ckpt"), **env)
    e["PATH"] = f"{fake}{os.pathsep}{_env()['PATH']}"
    r = subprocess.run(["bash", str(EXAMPLES / "train_wikitext103.sh"), model, "--log-interval", "7"],
                       capture_output=True, text=True, env=_env(**e))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[0])


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_scripts_parse_and_fail_fast(script):
    assert_shell_script_parses_and_is_strict(EXAMPLES / script)


FAIL_FAST = [
    ("prepare_wikitext103.sh", ["--zip", MISSING + "/w.zip"], {}, "--zip file not found: " + MISSING),
    ("prepare_wikitext103.sh", ["--tgz"], {}, "usage: prepare_wikitext103.sh"),
    ("train_wikitext103.sh", [], {}, "usage: train_wikitext103.sh"),
    ("train_wikitext103.sh", ["transformer"], {"DATA": MISSING}, MISSING + "/dict.txt"),
    ("evaluate_wikitext103.sh", [], {}, "usage: evaluate_wikitext103.sh"),
    ("evaluate_wikitext103.sh", [MISSING + "/checkpoint_best.pt"], {}, "checkpoint not found"),
]


@pytest.mark.parametrize("script,args,env,message", FAIL_FAST,
                         ids=[f"{s}-{i}" for i, (s, *_rest) in enumerate(FAIL_FAST)])
def test_scripts_name_the_problem_before_looking_for_tools(script, args, env, message):
    assert_script_fails_fast(EXAMPLES / script, args, env, message)


@pytest.mark.usefixtures("cuda_hidden")  # the CPU fallback, on a GPU machine too
def test_transformer_recipe_has_the_papers_settings_and_batch(tmp_path):
    args = _train_command_line(tmp_path, "transformer")
    assert args[1:3] == ["--user-dir", str(REPO / "rdrop_fairseq")]
    for flag, value in [("--task", "language_modeling"), ("--arch", "transformer_lm_gpt"), ("--dropout", "0.1"),
                        ("--criterion", "label_smoothed_cross_entropy_rdrop"), ("--label-smoothing", "0"),
                        ("--rdrop-alpha", "1.0"), ("--optimizer", "adam"), ("--adam-betas", "(0.9,0.98)"),
                        ("--weight-decay", "0.01"), ("--clip-norm", "0.0"), ("--lr", "5e-4"),
                        ("--lr-scheduler", "inverse_sqrt"), ("--warmup-updates", "4000"),
                        ("--warmup-init-lr", "1e-07"), ("--tokens-per-sample", "512"),
                        ("--sample-break-mode", "none"), ("--max-update", "50000"), ("--seed", "1")]:
        assert _flag(args, flag) == value, flag
    # one GPU: the official 8 GPUs x 16 batches of --max-tokens 2000 as 128 batches
    assert (_flag(args, "--max-tokens"), _flag(args, "--update-freq")) == ("2000", "128")
    assert "--share-decoder-input-output-embed" in args and "--cpu" in args and "--fp16" not in args
    assert args[-2:] == ["--log-interval", "7"]


@pytest.mark.usefixtures("cuda_hidden")  # the CPU fallback, on a GPU machine too
def test_adaptive_input_recipe_has_fairseqs_schedule_and_the_adaptive_criterion(tmp_path):
    args = _train_command_line(tmp_path, "adaptive", RDROP_ALPHA="0")
    for flag, value in [("--arch", "transformer_lm_wiki103"), ("--criterion", "adaptive_loss_rdrop"),
                        ("--rdrop-alpha", "0"), ("--optimizer", "nag"), ("--lr-scheduler", "cosine"),
                        ("--lr", "1.0"), ("--t-mult", "2"), ("--lr-period-updates", "270000"),
                        ("--lr-shrink", "0.75"), ("--warmup-updates", "16000"), ("--min-lr", "1e-4"),
                        ("--stop-min-lr", "1e-09"), ("--clip-norm", "0.1"), ("--tokens-per-sample", "3072"),
                        ("--max-tokens", "3072"), ("--update-freq", "24"), ("--max-update", "286000"),
                        ("--ddp-backend", "legacy_ddp")]:
        assert _flag(args, flag) == value, flag


@pytest.mark.parametrize("model", ["transformer", "adaptive"])
@pytest.mark.usefixtures("cuda_hidden")  # the CPU fallback, on a GPU machine too
def test_checkpoint_activations_switch_adds_fairseqs_flag_and_keeps_the_batch(tmp_path, model):
    runs = {}
    for switch in ("0", "1"):
        (tmp_path / switch).mkdir()
        runs[switch] = _train_command_line(tmp_path / switch, model, CHECKPOINT_ACTIVATIONS=switch)
    assert "--checkpoint-activations" not in runs["0"] and runs["1"].count("--checkpoint-activations") == 1
    for flag in ("--max-tokens", "--update-freq", "--tokens-per-sample"):
        assert _flag(runs["1"], flag) == _flag(runs["0"], flag), flag


def test_checkpoint_activations_switch_takes_only_0_or_1(tmp_path):
    data = _empty_data_bin(tmp_path / "data")
    assert_script_fails_fast(EXAMPLES / "train_wikitext103.sh", ["transformer"],
                             {"CHECKPOINT_ACTIVATIONS": "yes", "DATA": str(data)},
                             "CHECKPOINT_ACTIVATIONS must be 0 or 1, got 'yes'")


@pytest.mark.parametrize("model,gpus", [("transformer", "3"), ("adaptive", "5")])
def test_gpu_counts_that_do_not_divide_the_papers_batch_are_refused(tmp_path, model, gpus):
    data = _empty_data_bin(tmp_path / "data")
    r = subprocess.run(["bash", str(EXAMPLES / "train_wikitext103.sh"), model], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "NUM_GPUS": gpus, "DATA": str(data)})
    assert r.returncode != 0
    assert f"NUM_GPUS={gpus} does not divide the {model} recipe's" in r.stderr, r.stderr


@pytest.mark.usefixtures("cuda_hidden")
def test_evaluate_stops_at_a_log_it_cannot_write_without_running_fairseq(tmp_path):
    """A subset's log that cannot be opened (a folder in its place) fails that subset, named, and
    fairseq-eval-lm does not run with its output on the terminal."""
    fake, ran = tmp_path / "fakebin", tmp_path / "ran"
    fake.mkdir()
    (fake / "fairseq-eval-lm").write_text(f'#!/bin/sh\ntouch "{ran}"\necho "Loss (base 2): 4.4512, Perplexity: 21.88"\n')
    (fake / "fairseq-eval-lm").chmod(0o755)
    checkpoint = tmp_path / "checkpoint_best.pt"
    checkpoint.write_bytes(b"")
    log = tmp_path / "eval_lm.checkpoint_best.valid.txt"
    log.mkdir()
    r = _bash("evaluate_wikitext103.sh", checkpoint, DATA=_empty_data_bin(tmp_path / "data"), SUBSETS="valid",
              PATH=f"{fake}{os.pathsep}{_env()['PATH']}")
    assert r.returncode == 1
    assert f"evaluate_wikitext103.sh: error: cannot write {log}\n" in r.stderr, r.stderr
    assert f"fairseq-eval-lm failed on valid (log: {log})" in r.stderr
    assert not ran.exists() and "Perplexity" not in r.stdout + r.stderr


def test_prepare_binarizes_the_zip_with_one_dictionary(wikitext_bin):
    data, r = wikitext_bin
    assert "binarized data in" in r.stdout
    for split in ("train", "valid", "test"):
        assert (data / f"{split}.bin").stat().st_size > 0 and (data / f"{split}.idx").exists()
    words = {line.split()[0] for line in (data / "dict.txt").read_text(encoding="utf-8").splitlines()}
    assert {"the", "@-@", "="} <= words  # WikiText tokens, words not pieces


def test_official_batch_of_max_tokens_2000_is_three_512_token_samples(wikitext_bin):
    """fairseq's batching of the recipe's 512-token blocks: --max-tokens 2000
    gives batches of 3 samples, so 128 batches are 384 samples (196,608 tokens)."""
    import numpy as np
    from fairseq.data import data_utils

    sizes = np.full(1000, 512)
    batches = data_utils.batch_by_size(np.arange(1000), lambda i: 512, max_tokens=2000, num_tokens_vec=sizes)
    assert {len(b) for b in batches} == {3, 1} and sum(len(b) == 3 for b in batches) == 333
    assert 128 * 3 * 512 == 196_608


@pytest.mark.parametrize("model", [
    "transformer",
    pytest.param("adaptive", marks=pytest.mark.slow),
])
@pytest.mark.usefixtures("cuda_hidden")  # the CPU path, on a GPU machine too
def test_smoke_mode_trains_a_tiny_model_with_r_drop_and_evaluates_it(wikitext_bin, tmp_path, model):
    """SMOKE=1: the recipe's command line, a tiny model, 3 updates, then evaluate_wikitext103.sh."""
    data, _ = wikitext_bin
    r = _bash("train_wikitext103.sh", model, SMOKE="1", DATA=data, SAVE_DIR=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = [line for line in r.stdout.splitlines() if "| train |" in line][-1]
    assert "num_updates 3" in summary and "kl_loss" in summary
    assert f"--arch {'transformer_lm_gpt' if model == 'transformer' else 'transformer_lm_wiki103'}" in r.stderr
    results = re.findall(r"^(\w+): Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)$", r.stdout, re.M)
    assert [subset for subset, _, _ in results] == ["valid", "test"], r.stdout
    for _, loss, ppl in results:
        assert float(ppl) == pytest.approx(2 ** float(loss), rel=1e-3)


def test_smoke_data_is_a_slice_of_the_shipped_wikitext2(tmp_path):
    r = _bash("prepare_wikitext103.sh", "--smoke", DATA=tmp_path / "bin")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "text" / "wiki.train.tokens").read_text(encoding="utf-8").splitlines() == head_lines(
        WIKITEXT2 / "wiki.train.tokens.gz", 400)
    assert (tmp_path / "bin" / "train.bin").stat().st_size > 0
