"""label_smoothed_cross_entropy_rdrop on a tiny real fairseq transformer.

References are computed in float64 from the model's actual output (captured
with a forward hook), written out from the formula in tests/references.py.
"""

import argparse
import logging
import math

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion, label_smoothed_nll_loss
from fairseq.logging import metrics
from fairseq.optim.sgd import SGD
from fairseq.trainer import Trainer

from rdrop_fairseq.loss import label_smoothed_nll_and_symmetric_kl

from .helpers.references import reference_rdrop_terms
from .helpers.tiny_fairseq import (
    OutputCapture,
    assert_sample_left_untouched,
    make_criterion,
    make_model,
    make_sample,
    make_task,
    run_capturing_outputs,
)


@pytest.fixture(scope="module")
def task():
    return make_task()


def test_training_objective_equals_float64_reference_from_the_models_own_output(task):
    model, criterion = make_model(task), make_criterion(task, rdrop_alpha=5.0)
    sample = make_sample(task)
    objective, sample_size, log, outputs = run_capturing_outputs(criterion, model, sample)
    assert len(outputs) == 1, "both passes must run in one forward call"
    logits = outputs[0]
    assert logits.size(0) == 2 * sample["target"].size(0)
    ref = reference_rdrop_terms(logits.detach(), sample["target"], task.target_dictionary.pad(), 0.1, 5.0)
    assert sample_size == sample["ntokens"]
    torch.testing.assert_close(objective.double(), ref["objective"], rtol=1e-5, atol=1e-5)


def test_the_two_passes_see_independent_dropout_masks(task):
    model, criterion = make_model(task), make_criterion(task)
    _, _, log, outputs = run_capturing_outputs(criterion, model, make_sample(task))
    first, second = outputs[0].detach().chunk(2)
    assert not torch.allclose(first, second)
    assert log["kl_loss"] > 0


def test_gradient_flows_through_both_passes_as_in_the_reference(task):
    model, criterion = make_model(task), make_criterion(task, rdrop_alpha=2.0)
    sample = make_sample(task, seed=1)
    objective, _, _, outputs = run_capturing_outputs(criterion, model, sample)
    objective.backward()
    logits = outputs[0]
    leaf = logits.detach().double().requires_grad_()
    reference_rdrop_terms(leaf, sample["target"], task.target_dictionary.pad(), 0.1, 2.0)["objective"].backward()
    torch.testing.assert_close(logits.grad.double(), leaf.grad, rtol=1e-4, atol=1e-7)
    batch = sample["target"].size(0)
    assert logits.grad[:batch].abs().sum() > 0 and logits.grad[batch:].abs().sum() > 0


def test_logged_values_are_per_pass_averages_and_the_symmetric_kl(task):
    model, criterion = make_model(task), make_criterion(task, rdrop_alpha=5.0)
    sample = make_sample(task, seed=2)
    _, _, log, outputs = run_capturing_outputs(criterion, model, sample)
    ref = reference_rdrop_terms(outputs[0].detach(), sample["target"], task.target_dictionary.pad(), 0.1, 5.0)
    assert set(log) == {"loss", "nll_loss", "kl_loss", "ntokens", "nsentences", "sample_size", "n_correct", "total"}
    for key in ("loss", "nll_loss", "kl_loss"):
        torch.testing.assert_close(log[key].double(), ref[key], rtol=1e-5, atol=1e-5)
    assert (log["n_correct"], log["total"]) == (ref["n_correct"], ref["total"])
    assert (log["ntokens"], log["nsentences"], log["sample_size"]) == (
        sample["ntokens"],
        sample["target"].size(0),
        sample["ntokens"],
    )


def test_reduce_metrics_reports_base2_per_token_figures_summed_over_workers(task):
    model, criterion = make_model(task), make_criterion(task)
    logs = [run_capturing_outputs(criterion, model, make_sample(task, seed=s))[2] for s in (3, 4)]
    with metrics.aggregate() as agg:
        type(criterion).reduce_metrics(logs)
        reduced = agg.get_smoothed_values()
    ntokens = sum(log["ntokens"] for log in logs)
    ln2 = math.log(2)
    assert reduced["loss"] == pytest.approx(sum(float(l["loss"]) for l in logs) / ntokens / ln2, abs=1e-3)
    assert reduced["nll_loss"] == pytest.approx(sum(float(l["nll_loss"]) for l in logs) / ntokens / ln2, abs=1e-3)
    assert reduced["kl_loss"] == pytest.approx(sum(float(l["kl_loss"]) for l in logs) / ntokens / ln2, abs=1e-3)
    assert reduced["ppl"] == pytest.approx(2 ** reduced["nll_loss"], rel=1e-2)
    total = sum(l["total"] for l in logs)
    assert reduced["accuracy"] == pytest.approx(100.0 * sum(l["n_correct"] for l in logs) / total, abs=1e-3)


def _reduced(criterion, logging_outputs):
    with metrics.aggregate() as agg:
        type(criterion).reduce_metrics(logging_outputs)
        return agg.get_smoothed_values()


def test_logging_outputs_are_summed_across_workers_as_fairseqs_trainer_sums_them(task, one_rank_process_group):
    """fairseq's Trainer asks the task whether the criterion's logging outputs can be
    summed and, if so, sums the workers' outputs key by key (_fast_stat_sync_sum, an
    all-reduce) and reduces that one sum. The figures must be those of reducing the
    workers' own outputs, every key included (``rdrop_alpha`` under warm-up too)."""
    model = make_model(task)
    criterion = make_criterion(task, rdrop_alpha_warmup_updates=10)
    criterion.set_num_updates(4)
    workers = [run_capturing_outputs(criterion, model, make_sample(task, seed=s))[2] for s in (5, 6)]
    assert type(task).logging_outputs_can_be_summed(criterion)
    trainer = argparse.Namespace(device=torch.device("cpu"), data_parallel_process_group=one_rank_process_group)
    (summed,), _ = Trainer._fast_stat_sync_sum(trainer, workers)
    one_by_one, after_the_sum = _reduced(criterion, workers), _reduced(criterion, [summed])
    assert set(one_by_one) >= {"loss", "nll_loss", "ppl", "kl_loss", "accuracy", "rdrop_alpha"}
    assert after_the_sum == pytest.approx(one_by_one, rel=1e-6)
    assert one_by_one["rdrop_alpha"] == pytest.approx(5.0 * 4 / 10)


def test_validation_logging_outputs_of_two_halves_of_a_batch_sum_to_the_whole_batchs(task):
    """Two workers validating one half of a batch each log, summed, what one worker logs for all of it."""
    model, criterion = make_model(task), make_criterion(task)
    model.eval()
    sample = make_sample(task, batch_size=4, seed=7)
    halves = [_select_rows(sample, rows, task.target_dictionary.pad()) for rows in (slice(0, 2), slice(2, 4))]
    with torch.no_grad():
        whole = criterion(model, sample)[2]
        parts = [criterion(model, half)[2] for half in halves]
    for key, value in whole.items():
        assert float(sum(part[key] for part in parts)) == pytest.approx(float(value), rel=1e-5), key
    assert _reduced(criterion, parts) == pytest.approx(_reduced(criterion, [whole]), rel=1e-5)


def _select_rows(sample, rows, pad):
    """The rows ``rows`` of a batch, as fairseq's collater would batch them (padding kept)."""
    target = sample["target"][rows]
    return {
        "id": sample["id"][rows],
        "nsentences": target.size(0),
        "ntokens": int(target.ne(pad).sum()),
        "net_input": {k: v[rows] for k, v in sample["net_input"].items()},
        "target": target,
    }


def test_alpha_zero_is_exactly_fairseqs_label_smoothed_cross_entropy_with_one_pass(task):
    sample = make_sample(task, seed=5)
    results = []
    for criterion in (
        make_criterion(task, rdrop_alpha=0.0),
        LabelSmoothedCrossEntropyCriterion(task, False, 0.1, report_accuracy=True),
    ):
        model = make_model(task)
        torch.manual_seed(123)
        objective, sample_size, log, outputs = run_capturing_outputs(criterion, model, sample)
        objective.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((objective, sample_size, log, outputs, grads))
    (obj_a, size_a, log_a, out_a, grads_a), (obj_b, size_b, log_b, out_b, grads_b) = results
    assert len(out_a) == 1 and out_a[0].size(0) == sample["target"].size(0)
    assert torch.equal(obj_a, obj_b) and size_a == size_b
    assert log_a.keys() == log_b.keys()
    assert all(torch.equal(torch.as_tensor(log_a[k]), torch.as_tensor(log_b[k])) for k in log_a)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_eval_mode_is_a_single_plain_pass_identical_to_fairseq(task):
    model, criterion = make_model(task), make_criterion(task, rdrop_alpha=5.0)
    model.eval()
    sample = make_sample(task, seed=6)
    with torch.no_grad():
        ours, size, log, outputs = run_capturing_outputs(criterion, model, sample)
        theirs, _, their_log = LabelSmoothedCrossEntropyCriterion(task, False, 0.1, report_accuracy=True)(
            model, sample
        )
    assert len(outputs) == 1 and outputs[0].size(0) == sample["target"].size(0)
    assert torch.equal(ours, theirs) and size == sample["ntokens"]
    assert "kl_loss" not in log and log.keys() == their_log.keys()


def test_the_callers_sample_is_not_mutated(task):
    model, criterion = make_model(task), make_criterion(task)
    sample = make_sample(task, seed=7)
    assert_sample_left_untouched(sample, lambda: criterion(model, sample)[0].backward())


def test_every_batch_first_tensor_of_net_input_is_doubled_and_others_pass_through(task):
    model, criterion = make_model(task), make_criterion(task)
    sample = make_sample(task, seed=8)
    sample["net_input"]["return_all_hiddens"] = False
    seen = {}
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    try:
        criterion(model, sample)
    finally:
        handle.remove()
    batch = sample["target"].size(0)
    for key in ("src_tokens", "src_lengths", "prev_output_tokens"):
        original = sample["net_input"][key]
        assert torch.equal(seen[key], torch.cat([original, original]))
    assert seen["return_all_hiddens"] is False
    assert seen["src_tokens"].size(0) == 2 * batch


def test_kl_is_masked_where_ignore_prefix_size_drops_tokens(task):
    model = make_model(task)
    criterion = make_criterion(task, rdrop_alpha=3.0, ignore_prefix_size=2)
    sample = make_sample(task, seed=9, target_lengths=[6, 5, 4])
    objective, _, log, outputs = run_capturing_outputs(criterion, model, sample)
    pad = task.target_dictionary.pad()
    ref = reference_rdrop_terms(outputs[0].detach(), sample["target"], pad, 0.1, 3.0, prefix=2)
    torch.testing.assert_close(objective.double(), ref["objective"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["kl_loss"].double(), ref["kl_loss"], rtol=1e-5, atol=1e-6)


def test_sentence_avg_normalises_by_sentences_and_the_objective_stays_the_sum(task):
    model = make_model(task)
    criterion = make_criterion(task, sentence_avg=True, rdrop_alpha=5.0)
    sample = make_sample(task, seed=10)
    objective, sample_size, log, outputs = run_capturing_outputs(criterion, model, sample)
    ref = reference_rdrop_terms(outputs[0].detach(), sample["target"], task.target_dictionary.pad(), 0.1, 5.0)
    assert sample_size == log["sample_size"] == sample["target"].size(0)
    # fairseq's trainer divides by sample_size: the criterion returns the sum, as without --sentence-avg
    torch.testing.assert_close(objective.double(), ref["objective"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["loss"].double(), ref["loss"], rtol=1e-5, atol=1e-5)


def _run_unreduced(criterion, model, sample):
    capture = OutputCapture(model)
    try:
        return (*criterion(model, sample, reduce=False), capture.logits[0].detach())
    finally:
        capture.remove()


def test_on_the_rdrop_path_each_passs_loss_per_token_is_fairseqs_label_smoothed_nll_loss(task):
    model, criterion = make_model(task), make_criterion(task, rdrop_alpha=5.0)
    sample = make_sample(task, seed=15)
    objective, _, log, logits = _run_unreduced(criterion, model, sample)
    pad, target = task.target_dictionary.pad(), sample["target"]
    lprobs = model.get_normalized_probs((logits, {}), log_probs=True)
    # fairseq's (loss, nll_loss) of each pass, per token: (tokens, 1)
    passes = [
        label_smoothed_nll_loss(half.reshape(-1, half.size(-1)), target.view(-1), 0.1, ignore_index=pad, reduce=False)
        for half in lprobs.chunk(2)
    ]
    terms = label_smoothed_nll_and_symmetric_kl(lprobs, target, 0.1, pad)
    for k, (loss, nll) in enumerate(passes):
        torch.testing.assert_close(terms.smoothed_nll[k].view(-1, 1), loss, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(terms.nll[k].view(-1, 1), nll, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(log["loss"], (passes[0][0] + passes[1][0]) / 2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(log["nll_loss"], (passes[0][1] + passes[1][1]) / 2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(objective, passes[0][0] + passes[1][0] + 5.0 * log["kl_loss"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prefix", [0, 2])
def test_unreduced_outputs_have_fairseqs_per_token_shape_in_training_and_validation(task, prefix):
    sample = make_sample(task, seed=16, target_lengths=[6, 5, 4])
    model = make_model(task)
    torch.manual_seed(7)
    summed, _, summed_log = make_criterion(task, ignore_prefix_size=prefix)(model, sample)
    torch.manual_seed(7)
    per_token, _, log, _ = _run_unreduced(make_criterion(task, ignore_prefix_size=prefix), model, sample)
    model.eval()
    with torch.no_grad():
        theirs, _, their_log = LabelSmoothedCrossEntropyCriterion(task, False, 0.1, ignore_prefix_size=prefix)(
            model, sample, reduce=False
        )
        ours_eval, _, our_eval_log = make_criterion(task, ignore_prefix_size=prefix)(model, sample, reduce=False)
    tokens = sample["target"][:, prefix:].numel()
    assert theirs.shape == their_log["loss"].shape == (tokens, 1)
    assert per_token.shape == ours_eval.shape == theirs.shape
    assert log["loss"].shape == log["nll_loss"].shape == log["kl_loss"].shape == our_eval_log["nll_loss"].shape
    torch.testing.assert_close(per_token.sum(), summed, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(log["kl_loss"].sum(), summed_log["kl_loss"], rtol=1e-6, atol=1e-6)


def test_prefix_slicing_and_accuracy_are_fairseqs_own_methods(task, monkeypatch):
    """A change in fairseq's get_lprobs_and_target or compute_accuracy reaches the R-Drop path."""

    def drop_the_first_two_positions(self, model, net_output, sample):
        lprobs = model.get_normalized_probs(net_output, log_probs=True)[:, 2:]
        return lprobs.reshape(-1, lprobs.size(-1)), model.get_targets(sample, net_output)[:, 2:].reshape(-1)

    calls = []

    def count_correct(self, model, net_output, sample):
        calls.append(sample["target"])
        return torch.tensor(7), torch.tensor(9)

    monkeypatch.setattr(LabelSmoothedCrossEntropyCriterion, "get_lprobs_and_target", drop_the_first_two_positions)
    monkeypatch.setattr(LabelSmoothedCrossEntropyCriterion, "compute_accuracy", count_correct)
    model, criterion = make_model(task), make_criterion(task, rdrop_alpha=3.0)
    sample = make_sample(task, seed=17, target_lengths=[6, 5, 4])
    objective, _, log, outputs = run_capturing_outputs(criterion, model, sample)
    ref = reference_rdrop_terms(outputs[0].detach(), sample["target"], task.target_dictionary.pad(), 0.1, 3.0, prefix=2)
    torch.testing.assert_close(objective.double(), ref["objective"], rtol=1e-5, atol=1e-5)
    assert (log["n_correct"], log["total"]) == (7, 9)
    [both_targets] = calls
    assert torch.equal(both_targets, torch.cat([sample["target"], sample["target"]]))


def test_ddp_dummy_batch_contributes_no_gradient(task):
    model, criterion = make_model(task), make_criterion(task)
    optimizer = _plain_optimizer(model)
    loss, _, log = task.train_step(make_sample(task, seed=11), model, criterion, optimizer, 0, ignore_grad=True)
    assert loss.item() == 0.0
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())
    assert log["kl_loss"] > 0


def test_all_padding_batch_gives_zero_loss_and_a_working_backward(task):
    model, criterion = make_model(task), make_criterion(task)
    sample = make_sample(task, seed=12, target_lengths=[0, 0, 0])
    objective, sample_size, log, _ = run_capturing_outputs(criterion, model, sample)
    objective.backward()
    assert sample_size == 0 and objective.item() == 0.0 and float(log["kl_loss"]) == 0.0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_empty_batch_gives_zero_loss_and_a_working_backward(task):
    model, criterion = make_model(task), make_criterion(task)
    sample = make_sample(task, batch_size=0, target_lengths=[])
    objective, sample_size, log, _ = run_capturing_outputs(criterion, model, sample)
    objective.backward()
    assert sample_size == 0 and objective.item() == 0.0 and log["nsentences"] == 0


def test_a_batch_without_target_is_rejected_with_a_clear_error(task):
    model, criterion = make_model(task), make_criterion(task)
    sample = make_sample(task)
    del sample["target"]
    with pytest.raises(ValueError, match="needs batches with a 'target'"):
        criterion(model, sample)


@pytest.mark.parametrize("alpha", [-1.0, float("nan"), float("inf")])
def test_bad_alpha_is_rejected_with_the_flag_named(task, alpha):
    with pytest.raises(ValueError, match="--rdrop-alpha"):
        make_criterion(task, rdrop_alpha=alpha)


def test_a_model_without_dropout_warns_once_that_the_kl_is_zero(task, caplog):
    model, criterion = make_model(task, dropout=0.0), make_criterion(task)
    with caplog.at_level(logging.WARNING):
        logs = [criterion(model, make_sample(task, seed=s))[2] for s in (13, 14)]
    warnings = [r for r in caplog.records if "KL term is identically zero" in r.getMessage()]
    assert len(warnings) == 1 and "--rdrop-alpha" in warnings[0].getMessage()
    assert all(log["kl_loss"].item() == 0.0 for log in logs)


def _plain_optimizer(model):
    args = argparse.Namespace(lr=[0.1], momentum=0.0, weight_decay=0.0)
    return SGD(args, list(model.parameters()))
