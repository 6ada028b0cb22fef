"""fairseq's own command-line tools with --user-dir rdrop_fairseq on real data slices."""

import os
import re
import socket
import subprocess
import sys

import pytest
from sacrebleu.metrics import BLEU

from .helpers.fairseq_runs import COMMON_TRAIN, RDROP, REPO, TINY_TRANSFORMER, USER_DIR, WIKITEXT2, head_lines, run_tool, fairseq_script, train_records, write_lines

@pytest.fixture(scope="module")
def translation_run(multi30k_bin):
    """Train with R-Drop and --eval-bleu validation; returns (data root, save dir, log)."""
    save = multi30k_bin / "ckpt"
    save.mkdir()
    run_tool(
        "fairseq-train", multi30k_bin / "bin", "--task", "translation", *TINY_TRANSFORMER, *COMMON_TRAIN, *RDROP,
        "--label-smoothing", 0.1, "--max-tokens", 1024, "--max-update", 60,
        "--eval-bleu", "--eval-bleu-args", '{"beam": 1, "max_len_a": 1.2, "max_len_b": 10}',
        "--eval-bleu-remove-bpe", "sentencepiece", "--eval-bleu-detok", "space",
        "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
        "--save-dir", save, "--log-file", save / "train.log",
    )
    return multi30k_bin, save, save / "train.log"


def test_translation_training_loss_falls_and_kl_is_logged(translation_run):
    _, _, log = translation_run
    records = train_records(log)
    assert len(records) >= 6
    assert {"loss", "nll_loss", "kl_loss", "ppl", "num_updates"} <= set(records[0])
    assert records[-1]["loss"] < records[0]["loss"] - 1.0
    assert all(r["kl_loss"] > 0 for r in records)


def test_translation_validation_runs_eval_bleu_single_pass(translation_run):
    _, _, log = translation_run
    valid = train_records(log, "valid")
    assert valid and all(isinstance(r.get("valid_bleu"), float) for r in valid)
    assert "valid_kl_loss" not in valid[-1]


def test_generate_from_the_checkpoint_and_score_with_sacrebleu(translation_run):
    root, save, _ = translation_run
    out = run_tool(
        "fairseq-generate", root / "bin", "--user-dir", USER_DIR, "--path", save / "checkpoint_best.pt",
        "--cpu", "--beam", 2, "--batch-size", 32, "--remove-bpe", "sentencepiece", "--gen-subset", "test",
        "--required-batch-size-multiple", 1,
    ).stdout
    hyps = dict(re.findall(r"^D-(\d+)\t[^\t]*\t(.*)$", out, flags=re.M))
    refs = (root / "test.raw.de").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == len(refs)
    score = BLEU().corpus_score([hyps[str(i)] for i in range(len(refs))], [refs])
    assert 0.0 <= score.score <= 100.0 and score.sys_len > 0


def test_bad_alpha_fails_at_start_up_naming_the_flag(multi30k_bin):
    proc = run_tool(
        "fairseq-train", multi30k_bin / "bin", "--task", "translation", *TINY_TRANSFORMER, *COMMON_TRAIN,
        "--criterion", "label_smoothed_cross_entropy_rdrop", "--rdrop-alpha", -1, "--max-update", 1, "--max-tokens", 1024,
        "--save-dir", multi30k_bin / "bad", check=False, timeout=120,
    )
    assert proc.returncode != 0
    assert "--rdrop-alpha must be a finite number >= 0, got -1.0" in proc.stdout
    assert not (multi30k_bin / "bad" / "checkpoint_last.pt").exists()


def test_two_rank_data_parallel_training_on_cpu_logs_the_same_keys(multi30k_bin):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    save = multi30k_bin / "ddp"
    save.mkdir()
    args = [
        fairseq_script("fairseq-train"), multi30k_bin / "bin", "--task", "translation", *TINY_TRANSFORMER, *COMMON_TRAIN,
        *RDROP, "--label-smoothing", 0.1, "--max-tokens", 512, "--max-update", 8, "--save-dir", save,
        "--distributed-world-size", 2, "--distributed-init-method", f"tcp://127.0.0.1:{port}",
        "--distributed-no-spawn", "--device-id", 0, "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
    ]
    procs = [
        subprocess.Popen(
            [str(a) for a in args] + ["--distributed-rank", str(rank), "--log-file", str(save / f"rank{rank}.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        for rank in (0, 1)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    records = train_records(save / "rank0.log")
    assert records and {"loss", "nll_loss", "kl_loss", "ppl"} <= set(records[-1])
    summary = train_records(save / "rank0.log", "train")[-1]
    assert summary["train_num_updates"] == 8 and summary["train_kl_loss"] > 0
    assert (save / "checkpoint_last.pt").exists()


@pytest.fixture(scope="module")
def wikitext_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wikitext2")
    write_lines(root / "train.txt", head_lines(WIKITEXT2 / "wiki.train.tokens.gz", 1500))
    write_lines(root / "valid.txt", head_lines(WIKITEXT2 / "wiki.valid.tokens", 150))
    write_lines(root / "test.txt", head_lines(WIKITEXT2 / "wiki.test.tokens", 150))
    run_tool(
        "fairseq-preprocess", "--only-source", "--trainpref", root / "train.txt", "--validpref",
        root / "valid.txt", "--testpref", root / "test.txt", "--destdir", root / "bin", "--workers", 1,
    )
    save = root / "ckpt"
    save.mkdir()
    run_tool(
        "fairseq-train", root / "bin", "--task", "language_modeling", "--arch", "transformer_lm",
        "--decoder-layers", 1, "--decoder-embed-dim", 64, "--decoder-ffn-embed-dim", 128,
        "--decoder-attention-heads", 2, "--share-decoder-input-output-embed", "--dropout", 0.2,
        "--tokens-per-sample", 64, "--sample-break-mode", "none", "--max-tokens", 1024,
        *COMMON_TRAIN, "--criterion", "label_smoothed_cross_entropy_rdrop", "--label-smoothing", 0,
        "--rdrop-alpha", 1.0, "--max-update", 40, "--save-dir", save, "--log-file", save / "train.log",
    )
    return root, save


def test_language_model_training_loss_falls_and_kl_is_logged(wikitext_run):
    _, save = wikitext_run
    records = train_records(save / "train.log")
    assert records[-1]["loss"] < records[0]["loss"] - 1.0
    assert all(r["kl_loss"] > 0 for r in records)
    valid = train_records(save / "train.log", "valid")
    assert valid and "valid_kl_loss" not in valid[-1]


def test_eval_lm_reads_the_checkpoint_and_reports_perplexity(wikitext_run):
    root, save = wikitext_run
    out = run_tool(
        "fairseq-eval-lm", root / "bin", "--user-dir", USER_DIR, "--path", save / "checkpoint_last.pt",
        "--cpu", "--gen-subset", "test", "--tokens-per-sample", 64, "--context-window", 32, "--batch-size", 8,
    ).stdout
    match = re.search(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)", out)
    assert match, out[-2000:]
    loss, ppl = map(float, match.groups())
    assert ppl == pytest.approx(2**loss, rel=1e-2) and ppl < 5000


def test_log_plotter_draws_a_real_runs_curves(translation_run, tmp_path):
    pytest.importorskip("matplotlib", reason="the log plotter draws with matplotlib, which this environment lacks")
    _, _, log = translation_run
    out = tmp_path / "curves.png"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fairseq_logs.py"), "plot", "--out", str(out), f"rdrop={log}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_log_plotter_rejects_a_missing_log_by_name(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fairseq_logs.py"), "plot", "--out", str(tmp_path / "x.png"),
         f"run={tmp_path / 'missing.log'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "missing.log" in proc.stderr
