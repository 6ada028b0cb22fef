"""The plugin's repairs to the installed fairseq: a model loaded from a checkpoint
computes in evaluation what the model it was saved from computes, and every
parameter that training updates gets a gradient (as PyTorch DDP requires)."""

import torch

import rdrop_fairseq  # noqa: F401  (applies the repairs)
from rdrop_fairseq import fairseq_fixes

from .helpers.tiny_fairseq import make_criterion, make_model, make_sample, make_task


def test_an_encoder_loaded_from_a_state_dict_evaluates_a_padded_batch_as_the_model_it_was_saved_from():
    # fairseq 0.12.2 takes loaded encoder layers through torch's fused kernel,
    # which refuses its padding mask on torch >= 1.13; later fairseq never does
    task = make_task()
    saved = make_model(task, seed=1).eval()
    loaded = make_model(task, seed=2)
    loaded.load_state_dict(saved.state_dict())
    loaded.eval()
    pad = task.source_dictionary.pad()
    tokens = torch.tensor([[pad, pad, 5, 6, 2], [7, 8, 9, 10, 2], [pad, pad, pad, 11, 2]])
    lengths = (tokens != pad).sum(1)
    with torch.no_grad():
        expected = saved.encoder(tokens, src_lengths=lengths)["encoder_out"][0]
        actual = loaded.encoder(tokens, src_lengths=lengths)["encoder_out"][0]
    assert torch.equal(actual, expected)


def test_every_parameter_that_requires_a_gradient_gets_one_from_a_training_batch():
    # fairseq 0.12.2's fused fast-path copies never did, so PyTorch DDP without
    # --find-unused-parameters stopped at the second update, whatever the criterion
    task = make_task()
    model = make_model(task)
    for alpha in (0.0, 5.0):
        model.zero_grad(set_to_none=True)
        loss, _, _ = make_criterion(task, rdrop_alpha=alpha)(model, make_sample(task, seed=4))
        loss.backward()
        without = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert without == [], (alpha, without)


def test_the_repairs_can_be_applied_twice_without_wrapping_fairseq_again():
    layer = fairseq_fixes.transformer_layer.TransformerEncoderLayerBase
    before = layer.__dict__.get("_load_from_state_dict")
    fairseq_fixes.apply()
    assert layer.__dict__.get("_load_from_state_dict") is before
