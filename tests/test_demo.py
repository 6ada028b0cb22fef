"""The README's main job, end to end in the tiny budget, and the setup it trains."""

import json
import subprocess
import sys

import pytest

from rdrop_experiments.demo import train_args
from rdrop_experiments.training import TrainingRun

from .helpers.demo_commands import logged_commands
from .helpers.demos import load_demo
from .helpers.fairseq_runs import REPO

RECORDED = json.loads((REPO / "tests" / "data" / "demo_commands.json").read_text())["tiny_runs_logged"]


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


def test_translation_demo_runs_the_fairseq_commands_it_ran_before_its_plumbing_moved(tiny_demo):
    """Every fairseq-preprocess, -train and -generate command of the tiny run,
    against those the former code ran (tests/data/demo_commands.json)."""
    assert logged_commands(tiny_demo[1]) == RECORDED["multi30k"]


def test_translation_demo_trains_the_measured_setup(tmp_path):
    """fairseq's reading of the default run's command: the setup of the README's
    measured runs (examples/translation/README.md), value by value."""
    from fairseq import options

    demo = load_demo("multi30k")
    budget = demo.budgets["default"]
    run = TrainingRun("rdrop", 5.0, 1, budget, 1, tmp_path, lambda run: train_args(demo, tmp_path, run, demo.setup))
    parsed = options.parse_args_and_arch(options.get_training_parser(), [str(a) for a in run.train_args])
    measured = {
        "arch": "transformer", "share_all_embeddings": True, "encoder_layers": 2, "decoder_layers": 2,
        "encoder_embed_dim": 128, "decoder_embed_dim": 128, "encoder_ffn_embed_dim": 512,
        "decoder_ffn_embed_dim": 512, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
        "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1,
        "criterion": "label_smoothed_cross_entropy_rdrop", "rdrop_alpha": 5.0, "label_smoothing": 0.1,
        "optimizer": "adam", "adam_betas": "(0.9,0.98)", "lr": [0.002], "clip_norm": 0.0,
        "lr_scheduler": "inverse_sqrt", "warmup_updates": 200, "warmup_init_lr": 1e-07, "weight_decay": 0.0001,
        "max_tokens": 2048, "max_update": 1000, "validate_interval_updates": 100, "seed": 1,
        "eval_bleu": True, "eval_bleu_args": '{"beam": 1, "max_len_a": 1.2, "max_len_b": 10}',
        "eval_bleu_remove_bpe": "sentencepiece", "best_checkpoint_metric": "bleu",
        "maximize_best_checkpoint_metric": True,
    }
    assert {key: getattr(parsed, key) for key in measured} == measured
