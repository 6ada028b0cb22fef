"""2-rank data-parallel training on CPU (gloo, legacy_ddp) against 1 rank that
sees the same global batches.

fairseq shuffles the epoch's batches once and hands batch ``2i + r`` to rank
``r`` at update ``i``; one rank with ``--update-freq 2`` accumulates batches
``2i`` and ``2i + 1`` into update ``i``. With the same ``--max-tokens`` both
runs therefore train on the same global batches, which the exactly equal
per-update token and sentence counts below confirm, and the logged figures are
sums over the two halves of each global batch (over ranks in one run, over
micro-batches in the other).

Dropout is made to depend on the batch alone: fairseq reseeds once per
update, so both ranks would start from the same random state while the single
rank's second micro-batch would draw its masks after the first one's. The test
criterion below reseeds from the batch's sentence ids and the update count
before every training forward, so each micro-batch draws the same masks in
either run. The two runs are then the same computation, summed in a different
place (across ranks by all-reduce, or within one process by accumulation):
every micro-batch's KL agrees to float32 rounding (relative 1e-5), and the
logged per-update loss, NLL and KL agree to the log's 3 decimals. The summing
itself is checked too: each logged ``kl_loss`` is the sum over the update's
ranks (or micro-batches) of their own recorded ``kl_loss``, per token.
"""

import json
import math
from collections import defaultdict

import pytest

from .helpers.fairseq_runs import COMMON_TRAIN, RDROP, TINY_TRANSFORMER, fairseq_script, train_records
from .helpers.distributed import finish, launch, train_on_two_ranks, write_recording_criterion

UPDATES = 10
# fairseq logs 3 decimals: two values within float32 rounding may round apart by one unit.
LOG_ROUNDING = 1.5e-3


def record_env(save_dir):
    return {"RDROP_RECORD": str(save_dir / "record")}


def training_args(data, save_dir, user_dir):
    return [
        data / "bin", "--task", "translation", *TINY_TRANSFORMER, *COMMON_TRAIN, *RDROP,
        "--user-dir", user_dir, "--criterion", "rdrop_recording",
        "--label-smoothing", 0.1, "--max-tokens", 512, "--max-update", UPDATES, "--log-interval", 1,
        "--save-dir", save_dir, "--log-file", save_dir / "train.log", "--no-save",
    ]


@pytest.fixture(scope="module")
def runs(multi30k_bin):
    two_ranks, one_rank = multi30k_bin / "two-ranks", multi30k_bin / "one-rank"
    user_dir = write_recording_criterion(
        multi30k_bin / "rdrop_recording", "rdrop_recording", "rdrop_fairseq.criterions.label_smoothed_cross_entropy_rdrop",
        "LabelSmoothedCrossEntropyRDropCriterion", "LabelSmoothedCrossEntropyRDropCriterionConfig", "ntokens")
    two_ranks.mkdir()
    train_on_two_ranks(training_args(multi30k_bin, two_ranks, user_dir), env=record_env(two_ranks))
    one_rank.mkdir()
    finish([launch([fairseq_script("fairseq-train"), *training_args(multi30k_bin, one_rank, user_dir), "--update-freq", 2],
                   record_env(one_rank))])
    return {
        name: (train_records(save / "train.log"), micro_batches(save))
        for name, save in (("two ranks", two_ranks), ("one rank", one_rank))
    }


def micro_batches(save_dir):
    """{update: [recorded logging output]} over every process of a run."""
    updates = defaultdict(list)
    for path in save_dir.glob("record.*"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            updates[record["update"]].append(record)
    return updates


def test_both_runs_train_on_the_same_global_batches(runs):
    two_ranks, one_rank = runs["two ranks"][0], runs["one rank"][0]
    assert [r["num_updates"] for r in two_ranks] == [r["num_updates"] for r in one_rank] == list(range(1, UPDATES + 1))
    # wpb and bsz are the target tokens and sentences summed over the update's
    # logging outputs: the ranks' in one run, the micro-batches' in the other.
    assert [(r["wpb"], r["bsz"]) for r in two_ranks] == [(r["wpb"], r["bsz"]) for r in one_rank]


@pytest.mark.parametrize("key", ["loss", "nll_loss", "kl_loss"])
def test_the_logged_loss_trajectories_are_the_same(runs, key):
    two_ranks, one_rank = runs["two ranks"][0], runs["one rank"][0]
    differences = [abs(a[key] - b[key]) for a, b in zip(two_ranks, one_rank)]
    assert max(differences) <= LOG_ROUNDING, differences
    assert all(r[key] > 0 for r in two_ranks + one_rank)


def test_every_micro_batch_gives_the_same_kl_on_two_ranks_as_on_one(runs):
    def by_batch(recorded):
        return {(u, h["ids"]): h for u, halves in recorded.items() for h in halves}

    two_ranks, one_rank = by_batch(runs["two ranks"][1]), by_batch(runs["one rank"][1])
    assert two_ranks.keys() == one_rank.keys() and len(two_ranks) == 2 * UPDATES
    for key, record in two_ranks.items():
        assert record["ntokens"] == one_rank[key]["ntokens"]
        assert record["kl_loss"] == pytest.approx(one_rank[key]["kl_loss"], rel=1e-5), key


@pytest.mark.parametrize("run", ["two ranks", "one rank"])
def test_each_logged_kl_is_the_sum_over_the_updates_two_halves(runs, run):
    records, recorded = runs[run]
    for record in records:
        halves = recorded[record["num_updates"]]
        assert len(halves) == 2, "one micro-batch per rank, or two on one rank"
        ntokens = sum(h["ntokens"] for h in halves)
        assert ntokens == record["wpb"]
        expected = sum(h["kl_loss"] for h in halves) / ntokens / math.log(2)
        assert record["kl_loss"] == pytest.approx(expected, abs=6e-4)
