"""--rdrop-alpha-warmup-updates: alpha rises linearly from 0 over the first N updates.

The update count comes from fairseq's Trainer, which logs ``num_updates``
after every update and on loading a checkpoint; ``trainer_updates`` below logs
it the same way. The end-to-end run through fairseq-train, resumed half-way,
is in tests/test_resume.py.
"""

import logging

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.logging import metrics
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from rdrop_fairseq.criterions.adaptive_loss_rdrop import AdaptiveLossRDrop
from rdrop_fairseq.criterions.rdrop_common import trainer_num_updates, warmed_up_alpha

from .test_adaptive_loss_rdrop import VOCAB_WORDS as ADAPTIVE_VOCAB_WORDS
from .test_adaptive_loss_rdrop import make_lm
from .test_adaptive_loss_rdrop import make_sample as make_lm_sample
from .helpers.tiny_fairseq import make_criterion, make_model, make_sample, make_task


@pytest.fixture(scope="module")
def task():
    return make_task()


@pytest.fixture(autouse=True)
def fresh_metrics():
    metrics.reset()
    yield
    metrics.reset()


def trainer_updates(count):
    """What ``Trainer.set_num_updates`` logs after ``count`` updates."""
    metrics.log_scalar("num_updates", count, weight=0, priority=200)


@pytest.mark.parametrize(
    "num_updates, expected",
    [(0, 0.0), (1, 1.25), (2, 2.5), (3, 3.75), (4, 5.0), (5, 5.0), (1000, 5.0)],
)
def test_alpha_rises_linearly_from_zero_over_the_warmup_updates(num_updates, expected):
    assert warmed_up_alpha(5.0, 4, num_updates) == pytest.approx(expected, abs=1e-12)


def test_no_warmup_is_the_constant_alpha_from_the_first_update():
    assert warmed_up_alpha(5.0, 0, 0) == 5.0 and warmed_up_alpha(5.0, 0, 7) == 5.0


def test_the_update_count_is_the_trainers_latest_and_none_before_any_update():
    assert trainer_num_updates() is None
    for count in (1, 2, 3):
        trainer_updates(count)
    assert trainer_num_updates() == 3


def test_the_update_count_follows_the_trainer_after_it_restores_saved_metrics():
    # Trainer.load_checkpoint logs the checkpoint's count, then restores the
    # saved aggregators; training goes on logging into the active ones.
    trainer_updates(4)
    metrics.load_state_dict(metrics.state_dict())
    trainer_updates(5)
    with metrics.aggregate("train"):
        trainer_updates(6)
        assert trainer_num_updates() == 6


@pytest.mark.parametrize("completed, alpha_used", [(0, 0.0), (1, 1.0), (3, 3.0), (9, 4.0)])
def test_the_objective_weighs_the_kl_with_the_warmed_up_alpha(task, completed, alpha_used):
    criterion = make_criterion(task, rdrop_alpha=4.0, rdrop_alpha_warmup_updates=4)
    trainer_updates(completed)
    objective, _, log = criterion(make_model(task), make_sample(task, seed=completed))
    # The objective is the two passes' summed CE plus alpha times the summed KL;
    # the log holds the per-pass CE average and the KL.
    expected = 2 * log["loss"].double() + alpha_used * log["kl_loss"].double()
    torch.testing.assert_close(objective.detach().double(), expected, rtol=1e-5, atol=1e-5)
    assert log["kl_loss"] > 0, "both passes run and the KL is logged even while alpha is 0"
    assert log["rdrop_alpha_x_nsentences"] == pytest.approx(alpha_used * log["nsentences"])


def test_reduce_metrics_logs_the_alpha_the_latest_update_used(task):
    criterion = make_criterion(task, rdrop_alpha=4.0, rdrop_alpha_warmup_updates=8)
    model = make_model(task)
    with metrics.aggregate() as interval:
        for completed in (1, 2):
            trainer_updates(completed)
            # two workers' or micro-batches' outputs, summed as fairseq's trainer sums them
            logs = [criterion(model, make_sample(task, seed=s))[2] for s in (1, 2)]
            summed = {key: sum(log[key] for log in logs) for key in logs[0]}
            type(criterion).reduce_metrics([summed])
        values = interval.get_smoothed_values()
    assert values["rdrop_alpha"] == pytest.approx(1.0)


def test_without_warmup_rdrop_alpha_is_not_logged(task):
    criterion = make_criterion(task, rdrop_alpha=4.0)
    trainer_updates(1)
    _, _, log = criterion(make_model(task), make_sample(task))
    assert "rdrop_alpha_x_nsentences" not in log


def test_validation_is_one_plain_pass_without_rdrop_alpha(task):
    criterion = make_criterion(task, rdrop_alpha=4.0, rdrop_alpha_warmup_updates=4)
    model = make_model(task)
    model.eval()
    trainer_updates(2)
    with torch.no_grad():
        _, _, log = criterion(model, make_sample(task))
    assert "kl_loss" not in log and "rdrop_alpha_x_nsentences" not in log


def test_empty_batches_keep_the_logging_keys_summable(task):
    criterion = make_criterion(task, rdrop_alpha=4.0, rdrop_alpha_warmup_updates=4)
    trainer_updates(2)
    real = criterion(make_model(task), make_sample(task))[2]
    empty = criterion(make_model(task), make_sample(task, target_lengths=[0, 0, 0], tgt_len=0))[2]
    assert empty.keys() == real.keys() and empty["rdrop_alpha_x_nsentences"] == 0


def test_adaptive_loss_rdrop_warms_up_the_same_way():
    dictionary = Dictionary()
    for i in range(ADAPTIVE_VOCAB_WORDS):
        dictionary.add_symbol(f"w{i}")
    lm_task = LanguageModelingTask(LanguageModelingConfig(), dictionary, dictionary)
    criterion = AdaptiveLossRDrop(lm_task, sentence_avg=False, rdrop_alpha=2.0, rdrop_alpha_warmup_updates=4)
    trainer_updates(1)
    objective, _, log = criterion(make_lm(lm_task), make_lm_sample(lm_task))
    expected = 2 * log["loss"].double() + 0.5 * log["kl_loss"].double()
    torch.testing.assert_close(objective.detach().double(), expected, rtol=1e-5, atol=1e-5)
    assert log["rdrop_alpha_x_nsentences"] == pytest.approx(0.5 * log["nsentences"])


def _alpha_used(criterion, model, sample):
    """The alpha an R-Drop forward weighed the KL with, from its objective and log."""
    objective, _, log = criterion(model, sample)
    return float((objective.detach().double() - 2 * log["loss"].double()) / log["kl_loss"].double())


def test_outside_fairseqs_trainer_alpha_follows_set_num_updates_and_without_it_warns_once(task, caplog):
    criterion = make_criterion(task, rdrop_alpha=4.0, rdrop_alpha_warmup_updates=4)
    model, sample = make_model(task), make_sample(task)
    with caplog.at_level(logging.WARNING):
        alphas = [_alpha_used(criterion, model, sample) for _ in range(3)]
        assert _alpha_used(make_criterion(task, rdrop_alpha=4.0), model, sample) == pytest.approx(4.0, abs=1e-3)
    warnings = [r.getMessage() for r in caplog.records if "no update count" in r.getMessage()]
    assert alphas == pytest.approx([0.0] * 3, abs=1e-3)
    assert len(warnings) == 1 and "--rdrop-alpha-warmup-updates 4" in warnings[0]
    assert "criterion.set_num_updates(" in warnings[0]
    criterion.set_num_updates(3)
    trainer_updates(1)  # the count given explicitly comes first
    assert _alpha_used(criterion, model, sample) == pytest.approx(3.0, abs=1e-3)


def test_fairseq_trains_its_first_update_with_alpha_zero_and_no_warning(task, caplog):
    criterion = make_criterion(task, rdrop_alpha=4.0, rdrop_alpha_warmup_updates=4)
    with caplog.at_level(logging.WARNING), metrics.aggregate("train"), metrics.aggregate("train_inner"):
        alpha = _alpha_used(criterion, make_model(task), make_sample(task))
    assert alpha == pytest.approx(0.0, abs=1e-3)
    assert not [r for r in caplog.records if "no update count" in r.getMessage()]


@pytest.mark.parametrize("updates", [-1, 2.5, True])
def test_a_bad_warmup_length_is_rejected_with_the_flag_named(task, updates):
    with pytest.raises(ValueError, match="--rdrop-alpha-warmup-updates must be a whole number of updates >= 0"):
        make_criterion(task, rdrop_alpha_warmup_updates=updates)
