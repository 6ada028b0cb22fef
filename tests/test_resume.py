"""Training stopped at update K and resumed from checkpoint_last.pt continues as
if it had never stopped, with the alpha warm-up where it left off.

Run with the same seed, an uninterrupted run of 2K updates and a run stopped at
K and restarted with --max-update 2K end with the same parameters and log the
same losses. fairseq reseeds dropout at every update with seed + num_updates and
restores the data iterator, Adam's moments and the learning-rate schedule from
the checkpoint, so on one CPU thread the two are expected to agree to rounding;
the tolerance is 1e-6 absolute plus 1e-5 relative on every parameter, and the
logs' own rounding (3 decimals) on the losses.
"""

import pytest
import torch
from fairseq import checkpoint_utils

import rdrop_fairseq  # noqa: F401  (lets fairseq's loader read fairseq's checkpoint types under weights_only)

from .helpers.fairseq_runs import COMMON_TRAIN, RDROP, TINY_TRANSFORMER, learned_state, run_tool, train_records

K = 4
WARMUP = 6
ALPHA = 5.0


def train(data, save_dir, max_update, log_name):
    save_dir.mkdir(exist_ok=True)
    proc = run_tool(
        "fairseq-train", data / "bin", "--task", "translation", *TINY_TRANSFORMER, *COMMON_TRAIN, *RDROP,
        "--label-smoothing", 0.1, "--max-tokens", 1024, "--max-update", max_update,
        "--rdrop-alpha-warmup-updates", WARMUP, "--log-interval", 1,
        "--save-dir", save_dir, "--log-file", save_dir / log_name,
    )
    # the first update, before the Trainer has logged a count, is no reason to warn
    assert "has no update count to follow" not in proc.stdout
    return train_records(save_dir / log_name)


@pytest.fixture(scope="module")
def runs(multi30k_bin):
    uninterrupted = multi30k_bin / "uninterrupted"
    resumed = multi30k_bin / "resumed"
    whole = train(multi30k_bin, uninterrupted, 2 * K, "train.log")
    first = train(multi30k_bin, resumed, K, "first.log")
    second = train(multi30k_bin, resumed, 2 * K, "second.log")
    return {"uninterrupted": (uninterrupted, whole), "resumed": (resumed, first + second)}


def test_resumed_run_reaches_the_uninterrupted_runs_parameters(runs):
    (whole_dir, _), (resumed_dir, _) = runs["uninterrupted"], runs["resumed"]
    # fairseq's loader, as --restore-file and fairseq-generate use it, with torch's weights_only default
    whole, resumed = (
        checkpoint_utils.load_checkpoint_to_cpu(str(d / "checkpoint_last.pt")) for d in (whole_dir, resumed_dir)
    )
    assert whole["optimizer_history"][-1]["num_updates"] == resumed["optimizer_history"][-1]["num_updates"] == 2 * K
    assert whole["model"].keys() == resumed["model"].keys()
    for name, value in learned_state(whole["model"]).items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_resumed_run_logs_the_same_losses_update_by_update(runs):
    whole, resumed = runs["uninterrupted"][1], runs["resumed"][1]
    assert [r["num_updates"] for r in resumed] == [r["num_updates"] for r in whole] == list(range(1, 2 * K + 1))
    for mine, reference in zip(resumed, whole):
        for key in ("loss", "nll_loss", "kl_loss"):
            assert mine[key] == pytest.approx(reference[key], abs=1.5e-3), (mine["num_updates"], key)


def test_alpha_warmup_continues_from_the_checkpoints_update_count(runs):
    # The record of update n shows the alpha that update used: n - 1 updates done.
    for records in (runs["uninterrupted"][1], runs["resumed"][1]):
        logged = [r["rdrop_alpha"] for r in records]
        expected = [ALPHA * min(1.0, (n - 1) / WARMUP) for n in range(1, 2 * K + 1)]
        assert logged == pytest.approx(expected, abs=1e-4)
