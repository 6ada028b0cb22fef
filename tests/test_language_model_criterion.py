"""label_smoothed_cross_entropy_rdrop on a tiny real fairseq language model.

``--task language_modeling`` with ``transformer_lm`` and ``--label-smoothing 0``:
the training objective is ``CE1 + CE2 + alpha * sum_tokens 1/2 (KL12 + KL21)``
over the non-padding target tokens, and validation is fairseq's plain
``cross_entropy``. References are computed in float64 from the model's actual
output (captured with a forward hook), written out from the formula in
tests/references.py.
"""

import pytest
import torch
from fairseq.criterions.cross_entropy import CrossEntropyCriterion

from .helpers.references import reference_fairseq_label_smoothed_ce, reference_symmetric_kl
from .helpers.tiny_fairseq import make_criterion, make_lm, make_lm_sample, make_lm_task, run_capturing_outputs

ALPHA = 1.0  # the paper's weight for language modelling


@pytest.fixture(scope="module")
def task():
    return make_lm_task()


def _lm_criterion(task, rdrop_alpha=ALPHA):
    return make_criterion(task, rdrop_alpha=rdrop_alpha, label_smoothing=0.0, report_accuracy=False)


def _reference(logits, target, keep, alpha):
    """(CE1 + CE2 + alpha * KL, per-pass mean CE, KL) summed over the kept tokens, in float64,
    from the doubled batch's logits."""
    first, second = logits.double().split(target.size(0))
    ce = [reference_fairseq_label_smoothed_ce(half.log_softmax(-1), target, 0.0, keep)[1] for half in (first, second)]
    kl = reference_symmetric_kl(first, second, keep).sum()
    return {"objective": ce[0] + ce[1] + alpha * kl, "loss": (ce[0] + ce[1]) / 2, "kl_loss": kl}


def _padded_sample(task, seed):
    return make_lm_sample(task, seed=seed, target_lengths=[7, 4, 2])


def test_training_runs_one_forward_on_the_batch_concatenated_with_itself(task):
    model, criterion = make_lm(task), _lm_criterion(task)
    sample = _padded_sample(task, seed=0)
    seen = {}
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    try:
        _, _, _, outputs = run_capturing_outputs(criterion, model, sample)
    finally:
        handle.remove()
    assert len(outputs) == 1
    for key in ("src_tokens", "src_lengths"):
        original = sample["net_input"][key]
        assert torch.equal(seen[key], torch.cat([original, original]))
    first, second = outputs[0].detach().chunk(2)
    assert not torch.allclose(first, second), "the two copies must see different dropout masks"


def test_training_objective_equals_float64_reference_with_kl_masked_at_padding(task):
    model, criterion = make_lm(task), _lm_criterion(task)
    sample = _padded_sample(task, seed=1)
    objective, sample_size, _, outputs = run_capturing_outputs(criterion, model, sample)
    target = sample["target"]
    keep = target.ne(task.target_dictionary.pad())
    assert sample_size == sample["ntokens"] == int(keep.sum())
    ref = _reference(outputs[0].detach(), target, keep, ALPHA)
    torch.testing.assert_close(objective.double(), ref["objective"], rtol=1e-5, atol=1e-5)
    # Padding positions carry a nonzero KL of their own; counting them would change the value.
    unmasked = _reference(outputs[0].detach(), target, torch.ones_like(keep), ALPHA)
    assert abs(unmasked["kl_loss"] - ref["kl_loss"]) > 1e-3


def test_gradient_equals_the_float64_references_through_both_passes(task):
    model, criterion = make_lm(task), _lm_criterion(task)
    sample = _padded_sample(task, seed=2)
    objective, _, _, outputs = run_capturing_outputs(criterion, model, sample)
    objective.backward()
    logits = outputs[0]
    leaf = logits.detach().double().requires_grad_()
    keep = sample["target"].ne(task.target_dictionary.pad())
    _reference(leaf, sample["target"], keep, ALPHA)["objective"].backward()
    torch.testing.assert_close(logits.grad.double(), leaf.grad, rtol=1e-4, atol=1e-7)


def test_logged_loss_is_the_per_pass_cross_entropy_and_kl_loss_the_symmetric_kl(task):
    model, criterion = make_lm(task), _lm_criterion(task)
    sample = _padded_sample(task, seed=3)
    _, _, log, outputs = run_capturing_outputs(criterion, model, sample)
    keep = sample["target"].ne(task.target_dictionary.pad())
    ref = _reference(outputs[0].detach(), sample["target"], keep, ALPHA)
    torch.testing.assert_close(log["loss"].double(), ref["loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["nll_loss"].double(), ref["loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["kl_loss"].double(), ref["kl_loss"], rtol=1e-5, atol=1e-6)
    assert (log["ntokens"], log["nsentences"], log["sample_size"]) == (sample["ntokens"], 3, sample["ntokens"])


def test_validation_is_one_pass_equal_to_fairseqs_cross_entropy_without_kl(task):
    model, criterion = make_lm(task), _lm_criterion(task)
    model.eval()
    sample = _padded_sample(task, seed=4)
    with torch.no_grad():
        ours, size, log, outputs = run_capturing_outputs(criterion, model, sample)
        theirs, their_size, their_log = CrossEntropyCriterion(task, sentence_avg=False)(model, sample)
    assert len(outputs) == 1 and outputs[0].size(0) == sample["target"].size(0)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert size == their_size == sample["ntokens"]
    assert "kl_loss" not in log
    torch.testing.assert_close(log["nll_loss"], their_log["loss"], rtol=1e-6, atol=1e-6)
