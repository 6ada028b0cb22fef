"""adaptive_loss_rdrop on a tiny real fairseq language model with an adaptive softmax.

The KL references are brute force: the full next-token distribution over the
whole vocabulary in float64 (from ``AdaptiveSoftmax.get_log_prob``, or from the
definition p(w) = h(w), h(c) t_c(w)), and the symmetric KL summed over every
word. The CE references are fairseq's own ``adaptive_loss`` run on each pass.
"""

import argparse
import copy
import logging
import math

import pytest
import torch
from fairseq.criterions.adaptive_loss import AdaptiveLoss
from fairseq.data import Dictionary
from fairseq.logging import metrics
from fairseq.models.transformer_lm import TransformerLanguageModel, base_lm_architecture
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from rdrop_fairseq.criterions.adaptive_loss_rdrop import AdaptiveLossRDrop, AdaptiveLossRDropConfig
from rdrop_fairseq.loss import adaptive_symmetric_kl

from .helpers.references import reference_symmetric_kl
from .helpers.tiny_fairseq import assert_one_pass_equal, assert_sample_left_untouched, right_padded_targets

VOCAB_WORDS = 26  # 30 symbols with fairseq's 4 specials
CUTOFF = [8, 16]  # shortlist 0-7, clusters 8-15 and 16-29


@pytest.fixture(scope="module")
def task():
    dictionary = Dictionary()
    for i in range(VOCAB_WORDS):
        dictionary.add_symbol(f"w{i}")
    return LanguageModelingTask(LanguageModelingConfig(), dictionary, dictionary)


def make_lm(task, dropout=0.3, softmax_dropout=0.2, adaptive_input=False, seed=0):
    cutoff = ",".join(map(str, CUTOFF))
    args = argparse.Namespace(
        decoder_layers=1,
        decoder_embed_dim=16,
        decoder_ffn_embed_dim=32,
        decoder_attention_heads=2,
        dropout=dropout,
        attention_dropout=dropout,
        max_target_positions=64,
        adaptive_softmax_cutoff=cutoff,
        adaptive_softmax_dropout=softmax_dropout,
        adaptive_softmax_factor=2,
        adaptive_input=adaptive_input,
        adaptive_input_cutoff=cutoff,
        adaptive_input_factor=2,
        tie_adaptive_weights=adaptive_input,
        tie_adaptive_proj=adaptive_input,
    )
    base_lm_architecture(args)
    torch.manual_seed(seed)
    model = TransformerLanguageModel.build_model(args, task)
    model.train()
    return model


def deterministic_softmax(model):
    """Dropout off in the adaptive softmax only, so that a reference can rerun it
    on the captured features; the transformer still makes the passes differ."""
    model.decoder.adaptive_softmax.eval()
    return model


def make_sample(task, batch_size=3, length=7, seed=0, target_lengths=None):
    """A right-padded language-modelling batch. The first sentence starts with the
    word at offset padding_idx in each tail cluster, which fairseq's adaptive_loss
    treats specially."""
    gen = torch.Generator().manual_seed(seed)
    d = task.target_dictionary
    if target_lengths is None:
        target_lengths = torch.randint(2, length + 1, (batch_size,), generator=gen).tolist()
        target_lengths[0] = length
    target, source = right_padded_targets(d, target_lengths, length, gen, torch.tensor(CUTOFF) + d.pad())
    return {
        "id": torch.arange(batch_size),
        "nsentences": batch_size,
        "ntokens": int(target.ne(d.pad()).sum()),
        "net_input": {"src_tokens": source, "src_lengths": torch.tensor(target_lengths, dtype=torch.long)},
        "target": target,
    }


class Capture:
    """Records the model's features (its output, the adaptive softmax's input) and
    what the adaptive softmax's head and tails see and return."""

    def __init__(self, model):
        self.features, self.head_inputs, self.head_logits = [], [], []
        adaptive_softmax = model.decoder.adaptive_softmax
        self.tail_inputs = [[] for _ in adaptive_softmax.tail]
        self.tail_logits = [[] for _ in adaptive_softmax.tail]
        self.handles = [
            model.register_forward_hook(lambda m, i, out: self._keep_with_grad(self.features, out[0])),
            adaptive_softmax.head.register_forward_hook(self._record(self.head_inputs, self.head_logits)),
        ]
        for tail, inputs, logits in zip(adaptive_softmax.tail, self.tail_inputs, self.tail_logits):
            self.handles.append(tail.register_forward_hook(self._record(inputs, logits)))

    @staticmethod
    def _record(inputs, outputs):
        def hook(module, args, output):
            inputs.append(args[0])
            outputs.append(output)

        return hook

    @staticmethod
    def _keep_with_grad(store, tensor):
        if tensor.requires_grad:
            tensor.retain_grad()
        store.append(tensor)

    def remove(self):
        for handle in self.handles:
            handle.remove()


def run(criterion, model, sample, reduce=True):
    capture = Capture(model)
    try:
        objective, sample_size, log = criterion(model, sample, reduce=reduce)
    finally:
        capture.remove()
    return objective, sample_size, log, capture


def full_log_probs_via_get_log_prob(model, features):
    """log p(w) for every word, in float64, by fairseq's own full-vocabulary routine."""
    adaptive_softmax = copy.deepcopy(model.decoder.adaptive_softmax).double().eval()
    with torch.no_grad():
        return adaptive_softmax.get_log_prob(features.detach().double(), None)


def full_log_probs_from_logits(head_logits, tail_logits):
    """log p(w) for every word from the definition: log h(w) for a shortlist word,
    log h(c) + log t_c(w) for a word of tail cluster c; float64."""
    head = head_logits.double().log_softmax(-1)
    shortlist = CUTOFF[0]
    parts = [head[..., :shortlist]]
    for cluster, logits in enumerate(tail_logits):
        parts.append(head[..., shortlist + cluster, None] + logits.double().log_softmax(-1))
    return torch.cat(parts, -1)


def reference_fairseq_adaptive_ce(full_lprobs, target, pad):
    """Per token (0 at padding), fairseq adaptive_loss's CE from the full
    distribution: -log h(c) - log t_c(w) for a word of cluster c, with
    h(c) = sum of p over the cluster, except that fairseq's ignore_index also
    drops -log t_c(w) for the word at offset ``pad`` inside a cluster."""
    bounds = CUTOFF + [full_lprobs.size(-1)]
    rows = full_lprobs.reshape(-1, full_lprobs.size(-1))
    per_token = []
    for row, word in zip(rows, target.reshape(-1).tolist()):
        if word == pad:
            per_token.append(torch.zeros((), dtype=torch.float64))
        elif word < bounds[0]:
            per_token.append(-row[word])
        else:
            cluster = max(i for i in range(len(CUTOFF)) if word >= bounds[i])
            log_cluster = row[bounds[cluster] : bounds[cluster + 1]].logsumexp(-1)
            within = row[word] - log_cluster if word - bounds[cluster] != pad else 0.0
            per_token.append(-log_cluster - within)
    return torch.stack(per_token).view(target.shape)


def doubled_reference(full_lprobs, target, pad, alpha):
    """Objective pieces from the doubled batch's full log-probabilities (2B, T, V);
    log-probabilities are logits too, as reference_symmetric_kl takes them."""
    first, second = full_lprobs.split(target.size(0))
    ce = (reference_fairseq_adaptive_ce(first, target, pad) + reference_fairseq_adaptive_ce(second, target, pad)).sum()
    kl = reference_symmetric_kl(first, second, target.ne(pad)).sum()
    return {"objective": ce + alpha * kl, "ce": ce, "kl": kl}


class FixedOutputModel(torch.nn.Module):
    """Feeds fairseq's AdaptiveLoss fixed features in place of a forward pass."""

    def __init__(self, decoder, features):
        super().__init__()
        self.decoder, self.features = decoder, features

    def forward(self, **net_input):
        return self.features, {}

    def get_targets(self, sample, net_output):
        return sample["target"]


@pytest.mark.parametrize("adaptive_input", [False, True], ids=["own-softmax", "tied-adaptive-input"])
def test_kl_equals_brute_force_full_vocabulary_kl_from_get_log_prob(task, adaptive_input):
    model = deterministic_softmax(make_lm(task, adaptive_input=adaptive_input))
    sample = make_sample(task)
    _, _, log, capture = run(AdaptiveLossRDrop(task, False, rdrop_alpha=1.0), model, sample)
    assert len(capture.features) == 1
    full = full_log_probs_via_get_log_prob(model, capture.features[0])
    first, second = full.split(sample["target"].size(0))
    ref = reference_symmetric_kl(first, second, sample["target"].ne(task.target_dictionary.pad())).sum()
    assert ref > 0
    torch.testing.assert_close(log["kl_loss"].double(), ref, rtol=1e-5, atol=1e-6)


def test_adaptive_symmetric_kl_per_token_equals_brute_force_and_padding_gives_zero_and_no_gradient():
    gen = torch.Generator().manual_seed(0)
    rows, sizes = 12, [CUTOFF[1] - CUTOFF[0], 14]
    head_logits = [torch.randn(rows, CUTOFF[0] + len(sizes), generator=gen) * 3 for _ in range(2)]
    tail_logits = [[torch.randn(rows, k, generator=gen) * 3 for k in sizes] for _ in range(2)]
    keep = torch.rand(rows, generator=gen) > 0.3
    head_lprobs = [h.log_softmax(-1) for h in head_logits]
    tail_lprobs = [[t.log_softmax(-1) for t in tails] for tails in tail_logits]
    tail_lprobs[0][1][~keep] = float("inf")
    inputs = [h.requires_grad_() for h in head_lprobs] + [t.requires_grad_() for ts in tail_lprobs for t in ts]
    ours = adaptive_symmetric_kl(head_lprobs[0], head_lprobs[1], tail_lprobs[0], tail_lprobs[1], keep)
    ours.sum().backward()
    assert all(x.grad[~keep].eq(0).all() and x.grad[keep].ne(0).any() for x in inputs)
    ref = reference_symmetric_kl(
        full_log_probs_from_logits(head_logits[0], tail_logits[0]),
        full_log_probs_from_logits(head_logits[1], tail_logits[1]),
        keep,
    )
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    assert ours[~keep].eq(0).all()


def test_adaptive_symmetric_kl_gradient_passes_gradcheck_through_head_and_tails():
    gen = torch.Generator().manual_seed(1)
    rows, sizes = 4, [3, 5]
    logits = [torch.randn(rows, 2 + len(sizes), generator=gen, dtype=torch.float64) for _ in range(2)]
    logits += [torch.randn(rows, k, generator=gen, dtype=torch.float64) for _ in range(2) for k in sizes]
    logits = [x.requires_grad_() for x in logits]
    keep = torch.tensor([True, False, True, True])

    def kl(head1, head2, tail1a, tail1b, tail2a, tail2b):
        tails1 = [tail1a.log_softmax(-1), tail1b.log_softmax(-1)]
        tails2 = [tail2a.log_softmax(-1), tail2b.log_softmax(-1)]
        return adaptive_symmetric_kl(head1.log_softmax(-1), head2.log_softmax(-1), tails1, tails2, keep)

    assert torch.autograd.gradcheck(kl, tuple(logits))


def test_training_objective_is_fairseqs_adaptive_loss_of_each_pass_plus_alpha_brute_force_kl(task):
    model = deterministic_softmax(make_lm(task))
    criterion = AdaptiveLossRDrop(task, False, rdrop_alpha=2.5)
    sample = make_sample(task, seed=1)
    objective, sample_size, _, capture = run(criterion, model, sample)
    batch = sample["target"].size(0)
    assert capture.features[0].size(0) == 2 * batch
    halves = capture.features[0].detach().split(batch)
    fairseq_ce = sum(AdaptiveLoss(task, False)(FixedOutputModel(model.decoder, h), sample)[0] for h in halves)
    full = full_log_probs_via_get_log_prob(model, capture.features[0])
    kl = reference_symmetric_kl(*full.split(batch), sample["target"].ne(task.target_dictionary.pad())).sum()
    assert sample_size == sample["ntokens"]
    torch.testing.assert_close(objective.double(), fairseq_ce.double().squeeze() + 2.5 * kl, rtol=1e-5, atol=1e-5)


def test_with_softmax_dropout_every_cluster_is_evaluated_for_every_token_and_both_terms_use_it(task):
    model = make_lm(task, softmax_dropout=0.2)
    sample = make_sample(task, seed=2)
    objective, _, log, capture = run(AdaptiveLossRDrop(task, False, rdrop_alpha=1.5), model, sample)
    features = capture.features[0].detach().reshape(-1, capture.features[0].size(-1))
    softmax_input = capture.head_inputs[0]
    assert softmax_input.size(0) == 2 * sample["target"].numel()
    dropped = softmax_input.eq(0)
    assert dropped.any(), "the adaptive softmax's input dropout must apply, as in its forward"
    torch.testing.assert_close(softmax_input[~dropped], features[~dropped] / 0.8)
    assert [len(inputs) for inputs in capture.tail_inputs] == [1] * len(CUTOFF)
    assert all(torch.equal(inputs[0], softmax_input) for inputs in capture.tail_inputs)
    full = full_log_probs_from_logits(capture.head_logits[0].detach(), [t[0].detach() for t in capture.tail_logits])
    batch, length = sample["target"].shape
    ref = doubled_reference(full.view(2 * batch, length, -1), sample["target"], task.target_dictionary.pad(), 1.5)
    torch.testing.assert_close(objective.double(), ref["objective"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["kl_loss"].double(), ref["kl"], rtol=1e-5, atol=1e-6)


def test_gradient_equals_the_brute_force_references(task):
    model = deterministic_softmax(make_lm(task))
    sample = make_sample(task, seed=3)
    reference_softmax = copy.deepcopy(model.decoder.adaptive_softmax).double()
    objective, _, _, capture = run(AdaptiveLossRDrop(task, False, rdrop_alpha=2.0), model, sample)
    objective.backward()
    features = capture.features[0]
    leaf = features.detach().double().requires_grad_()
    full = full_log_probs_from_logits(reference_softmax.head(leaf), [tail(leaf) for tail in reference_softmax.tail])
    doubled_reference(full, sample["target"], task.target_dictionary.pad(), 2.0)["objective"].backward()
    torch.testing.assert_close(features.grad.double(), leaf.grad, rtol=1e-4, atol=1e-7)
    ours = dict(model.decoder.adaptive_softmax.named_parameters())
    for name, param in reference_softmax.named_parameters():
        torch.testing.assert_close(ours[name].grad.double(), param.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", ["alpha-zero", "eval"])
def test_alpha_zero_and_eval_mode_are_exactly_fairseqs_adaptive_loss_with_one_pass(task, mode):
    sample = make_sample(task, seed=4)
    alpha = 0.0 if mode == "alpha-zero" else 1.0
    results = []
    for criterion in (AdaptiveLossRDrop(task, False, rdrop_alpha=alpha), AdaptiveLoss(task, False)):
        model = make_lm(task)
        if mode == "eval":
            model.eval()
        torch.manual_seed(123)
        objective, sample_size, log, capture = run(criterion, model, sample)
        objective.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((objective, sample_size, log, capture.features, grads))
    assert_one_pass_equal(*results, sample)


def test_logged_values_are_per_pass_averages_and_the_symmetric_kl(task):
    model = deterministic_softmax(make_lm(task))
    sample = make_sample(task, seed=5)
    _, _, log, capture = run(AdaptiveLossRDrop(task, False, rdrop_alpha=1.0), model, sample)
    full = full_log_probs_via_get_log_prob(model, capture.features[0])
    ref = doubled_reference(full, sample["target"], task.target_dictionary.pad(), 1.0)
    assert set(log) == {"loss", "nll_loss", "kl_loss", "ntokens", "nsentences", "sample_size"}
    torch.testing.assert_close(log["loss"].double(), ref["ce"] / 2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["nll_loss"].double(), ref["ce"] / 2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["kl_loss"].double(), ref["kl"], rtol=1e-5, atol=1e-6)
    batch = sample["target"].size(0)
    assert (log["ntokens"], log["nsentences"], log["sample_size"]) == (sample["ntokens"], batch, sample["ntokens"])


def test_reduce_metrics_adds_the_kl_per_token_in_base_2_to_fairseqs_figures(task):
    model, criterion = make_lm(task), AdaptiveLossRDrop(task, False, rdrop_alpha=1.0)
    logs = [run(criterion, model, make_sample(task, seed=s))[2] for s in (6, 7)]
    with metrics.aggregate() as agg:
        AdaptiveLossRDrop.reduce_metrics(logs)
        reduced = agg.get_smoothed_values()
    ntokens = sum(log["ntokens"] for log in logs)
    ln2 = math.log(2)
    assert reduced["loss"] == pytest.approx(sum(float(l["loss"]) for l in logs) / ntokens / ln2, abs=1e-3)
    assert reduced["kl_loss"] == pytest.approx(sum(float(l["kl_loss"]) for l in logs) / ntokens / ln2, abs=1e-3)
    assert reduced["ppl"] == pytest.approx(2 ** reduced["loss"], rel=1e-2)
    assert AdaptiveLossRDrop.logging_outputs_can_be_summed()


def test_reduce_metrics_without_kl_is_fairseqs(task):
    model = make_lm(task).eval()
    logs = [AdaptiveLossRDrop(task, False)(model, make_sample(task, seed=8))[2]]
    with metrics.aggregate() as agg:
        AdaptiveLossRDrop.reduce_metrics(logs)
        ours = agg.get_smoothed_values()
    with metrics.aggregate() as agg:
        AdaptiveLoss.reduce_metrics(logs)
        theirs = agg.get_smoothed_values()
    assert ours == theirs and "kl_loss" not in ours


def test_the_callers_sample_is_not_mutated(task):
    model, criterion = make_lm(task), AdaptiveLossRDrop(task, False)
    sample = make_sample(task, seed=9)
    assert_sample_left_untouched(sample, lambda: criterion(model, sample)[0].backward())


def test_unreduced_losses_are_per_token_the_two_passes_own_ce_plus_alpha_kl(task):
    model = deterministic_softmax(make_lm(task))
    sample = make_sample(task, seed=13)
    objective, _, log, capture = run(AdaptiveLossRDrop(task, False, rdrop_alpha=1.5), model, sample, reduce=False)
    pad, target = task.target_dictionary.pad(), sample["target"]
    first, second = full_log_probs_via_get_log_prob(model, capture.features[0]).split(target.size(0))
    ce = reference_fairseq_adaptive_ce(first, target, pad) + reference_fairseq_adaptive_ce(second, target, pad)
    ce = ce.view(-1)
    kl = reference_symmetric_kl(first, second, target.ne(pad)).view(-1)
    # fairseq's adaptive_loss shape for reduce=False: one value per token of the batch
    assert objective.shape == log["loss"].shape == log["kl_loss"].shape == (target.numel(),)
    torch.testing.assert_close(log["loss"].double(), ce / 2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log["kl_loss"].double(), kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(objective.double(), ce + 1.5 * kl, rtol=1e-5, atol=1e-6)


def test_sentence_avg_normalises_by_sentences_and_the_objective_stays_the_sum(task):
    model = deterministic_softmax(make_lm(task))
    sample = make_sample(task, seed=10)
    objective, sample_size, log, capture = run(AdaptiveLossRDrop(task, True, rdrop_alpha=2.0), model, sample)
    full = full_log_probs_via_get_log_prob(model, capture.features[0])
    ref = doubled_reference(full, sample["target"], task.target_dictionary.pad(), 2.0)
    assert sample_size == log["sample_size"] == sample["target"].size(0)
    torch.testing.assert_close(objective.double(), ref["objective"], rtol=1e-5, atol=1e-5)


def test_empty_batch_gives_zero_loss_and_a_working_backward(task):
    model, criterion = make_lm(task), AdaptiveLossRDrop(task, False)
    sample = make_sample(task, batch_size=0, target_lengths=[])
    objective, sample_size, log, _ = run(criterion, model, sample)
    objective.backward()
    assert sample_size == 0 and objective.item() == 0.0
    assert set(log) == {"loss", "nll_loss", "kl_loss", "ntokens", "nsentences", "sample_size"}


def test_a_batch_without_target_is_rejected_with_a_clear_error(task):
    sample = make_sample(task)
    del sample["target"]
    with pytest.raises(ValueError, match="needs batches with a 'target'"):
        AdaptiveLossRDrop(task, False)(make_lm(task), sample)


@pytest.mark.parametrize("alpha", [-1.0, float("nan"), float("inf")])
def test_bad_alpha_is_rejected_with_the_flag_named(task, alpha):
    with pytest.raises(ValueError, match="--rdrop-alpha"):
        AdaptiveLossRDrop(task, False, rdrop_alpha=alpha)


def test_built_from_its_config_with_alpha_and_fairseqs_ddp_backend_check(task):
    criterion = AdaptiveLossRDrop.build_criterion(
        AdaptiveLossRDropConfig(sentence_avg=True, ddp_backend="legacy_ddp", rdrop_alpha=0.5), task
    )
    assert (criterion.rdrop_alpha, criterion.sentence_avg) == (0.5, True)
    assert AdaptiveLossRDropConfig.__dataclass_fields__["rdrop_alpha"].default == 1.0
    with pytest.raises(ValueError, match="legacy_ddp"):
        AdaptiveLossRDrop.build_criterion(
            AdaptiveLossRDropConfig(sentence_avg=False, ddp_backend="pytorch_ddp"), task
        )


def test_a_model_without_dropout_warns_once_that_the_kl_is_zero(task, caplog):
    model, criterion = make_lm(task, dropout=0.0, softmax_dropout=0.0), AdaptiveLossRDrop(task, False)
    with caplog.at_level(logging.WARNING):
        logs = [criterion(model, make_sample(task, seed=s))[2] for s in (11, 12)]
    warnings = [r for r in caplog.records if "KL term is identically zero" in r.getMessage()]
    assert len(warnings) == 1 and "--rdrop-alpha" in warnings[0].getMessage()
    assert all(log["kl_loss"].item() == 0.0 for log in logs)
