"""A tiny real fairseq transformer, task and batch for criterion tests."""

import argparse
import copy

import torch
from fairseq.data import Dictionary
from fairseq.models.transformer import TransformerModel, base_architecture
from fairseq.models.transformer_lm import TransformerLanguageModel, base_lm_architecture
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from rdrop_fairseq.criterions.label_smoothed_cross_entropy_rdrop import (
    LabelSmoothedCrossEntropyRDropCriterion,
)

VOCAB_WORDS = 23


def make_dictionary():
    dictionary = Dictionary()
    for i in range(VOCAB_WORDS):
        dictionary.add_symbol(f"w{i}")
    return dictionary


def make_task():
    dictionary = make_dictionary()
    return TranslationTask(TranslationConfig(), dictionary, dictionary)


def make_lm_task(**config):
    dictionary = make_dictionary()
    return LanguageModelingTask(LanguageModelingConfig(**config), dictionary, dictionary)


def _build(model_class, architecture, task, seed, **options):
    """A fairseq model from ``options`` completed by ``architecture``, seeded, in training mode."""
    args = argparse.Namespace(**options)
    architecture(args)
    torch.manual_seed(seed)
    model = model_class.build_model(args, task)
    model.train()
    return model


def make_model(task, dropout=0.3, seed=0):
    return _build(
        TransformerModel, base_architecture, task, seed,
        encoder_layers=1, decoder_layers=1, encoder_embed_dim=16, decoder_embed_dim=16,
        encoder_ffn_embed_dim=32, decoder_ffn_embed_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        dropout=dropout, attention_dropout=dropout, activation_dropout=dropout,
        max_source_positions=64, max_target_positions=64,
    )


def make_lm(task, dropout=0.3, seed=0):
    """A one-layer ``transformer_lm`` with tied input and output embeddings."""
    return _build(
        TransformerLanguageModel, base_lm_architecture, task, seed,
        decoder_layers=1, decoder_embed_dim=16, decoder_ffn_embed_dim=32, decoder_attention_heads=2,
        dropout=dropout, attention_dropout=dropout, activation_dropout=dropout,
        share_decoder_input_output_embed=True, max_target_positions=64,
    )


def make_criterion(task, rdrop_alpha=5.0, label_smoothing=0.1, **kwargs):
    options = dict(sentence_avg=False, ignore_prefix_size=0, report_accuracy=True)
    options.update(kwargs)
    return LabelSmoothedCrossEntropyRDropCriterion(
        task, label_smoothing=label_smoothing, rdrop_alpha=rdrop_alpha, **options
    )


def right_padded_targets(dictionary, lengths, max_len, gen, first_row_prefix=None):
    """Random eos-terminated targets, right-padded, and the same shifted right
    behind an eos (fairseq's decoder input), as fairseq's collater builds them.
    ``first_row_prefix`` fixes the first words of row 0."""
    d = dictionary
    target = torch.full((len(lengths), max_len), d.pad(), dtype=torch.long)
    shifted = torch.full((len(lengths), max_len), d.pad(), dtype=torch.long)
    for i, length in enumerate(lengths):
        if length == 0:
            continue
        words = torch.randint(d.nspecial, len(d), (length,), generator=gen)
        if i == 0 and first_row_prefix is not None:
            words[: len(first_row_prefix)] = first_row_prefix
        words[-1] = d.eos()
        target[i, :length] = words
        shifted[i, 0] = d.eos()
        shifted[i, 1:length] = words[:-1]
    return target, shifted


def _random_lengths(gen, batch_size, longest):
    """Lengths in [2, longest], the first row the longest."""
    lengths = torch.randint(2, longest + 1, (batch_size,), generator=gen).tolist()
    lengths[0] = longest
    return lengths


def _batch(target, net_input, pad):
    return {
        "id": torch.arange(target.size(0)),
        "nsentences": target.size(0),
        "ntokens": int(target.ne(pad).sum()),
        "net_input": net_input,
        "target": target,
    }


def make_sample(task, batch_size=3, src_len=7, tgt_len=6, seed=0, target_lengths=None):
    """A right-padded batch with varied target lengths, as fairseq's collater builds."""
    gen = torch.Generator().manual_seed(seed)
    d = task.target_dictionary
    src = torch.randint(d.nspecial, len(d), (batch_size, src_len), generator=gen)
    src[:, -1] = d.eos()
    if target_lengths is None:
        target_lengths = _random_lengths(gen, batch_size, tgt_len)
    target, prev = right_padded_targets(d, target_lengths, tgt_len, gen)
    src_lengths = torch.full((batch_size,), src_len, dtype=torch.long)
    return _batch(target, {"src_tokens": src, "src_lengths": src_lengths, "prev_output_tokens": prev}, d.pad())


def make_lm_sample(task, batch_size=3, length=7, seed=0, target_lengths=None):
    """A right-padded language-modelling batch as fairseq's MonolingualDataset
    collates it with ``--sample-break-mode eos``: the input is the target shifted
    right behind an eos."""
    gen = torch.Generator().manual_seed(seed)
    d = task.target_dictionary
    if target_lengths is None:
        target_lengths = _random_lengths(gen, batch_size, length)
    target, source = right_padded_targets(d, target_lengths, length, gen)
    src_lengths = torch.tensor(target_lengths, dtype=torch.long)
    return _batch(target, {"src_tokens": source, "src_lengths": src_lengths}, d.pad())


class OutputCapture:
    """Records every output of ``model.forward`` (the decoder's logits)."""

    def __init__(self, model):
        self.logits = []
        self.handle = model.register_forward_hook(self._record)

    def _record(self, module, inputs, output):
        logits = output[0]
        if logits.requires_grad:
            logits.retain_grad()
        self.logits.append(logits)

    def remove(self):
        self.handle.remove()


def run_capturing_outputs(criterion, model, sample):
    """``criterion(model, sample)`` and the list of the model's outputs (logits) during it."""
    capture = OutputCapture(model)
    try:
        objective, sample_size, log = criterion(model, sample)
    finally:
        capture.remove()
    return objective, sample_size, log, capture.logits


def assert_sample_left_untouched(sample, action):
    """Runs ``action()`` and checks the sample's dicts, tensors and values are as before."""
    before = copy.deepcopy(sample)
    tensors_before = dict(sample["net_input"])
    action()
    assert sample.keys() == before.keys() and sample["net_input"].keys() == before["net_input"].keys()
    for key, value in before["net_input"].items():
        assert sample["net_input"][key] is tensors_before[key]
        assert torch.equal(sample["net_input"][key], value)
    assert torch.equal(sample["target"], before["target"]) and sample["ntokens"] == before["ntokens"]


def assert_one_pass_equal(ours, theirs, sample):
    """Two (objective, sample_size, logging output, model outputs, gradients) results
    are the same one-pass computation: one model output of the batch's size, equal
    objective, sizes, logs (no kl_loss) and gradients."""
    (obj_a, size_a, log_a, out_a, grads_a), (obj_b, size_b, log_b, _, grads_b) = ours, theirs
    assert len(out_a) == 1 and out_a[0].size(0) == sample["target"].size(0)
    assert torch.equal(obj_a, obj_b) and size_a == size_b
    assert log_a.keys() == log_b.keys() and "kl_loss" not in log_a
    assert all(torch.equal(torch.as_tensor(log_a[k]), torch.as_tensor(log_b[k])) for k in log_a)
    assert len(grads_a) == len(grads_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
