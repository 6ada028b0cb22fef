"""--checkpoint-activations and --offload-activations leave an R-Drop step exact.

fairseq's checkpoint wrapper (fairseq/modules/checkpoint_activations.py) runs
each wrapped layer without keeping its activations and runs it again during
backward, with the RNG state of the forward restored, so that dropout draws the
same masks again. R-Drop's objective depends on those masks twice over: the
two copies of the doubled batch differ only by them, and the KL between the
copies is what a mask drawn anew in backward would change. Each test builds
the model twice from fairseq's command line, as fairseq-train does, with the
same weights in float64, once with the flag, and compares one training step of
the R-Drop criterion on the same batch and seed: loss, KL and the gradient of
every parameter. The last test trains with fairseq-train itself, with and
without the flag, and compares the logs and the parameters it ends with.
"""

import pytest
import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.tasks.translation import TranslationTask

import rdrop_fairseq  # noqa: F401  (lets fairseq's loader read fairseq's checkpoint types under weights_only)

from .helpers.fairseq_runs import COMMON_TRAIN, RDROP, TINY_TRANSFORMER, USER_DIR, learned_state, run_tool, train_records
from .helpers.tiny_fairseq import make_dictionary, make_lm_sample, make_sample

TINY_ENCODER_DECODER = [
    "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]
TINY_DECODER = [
    "--decoder-layers", "2", "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "32",
    "--decoder-attention-heads", "2",
]
TRANSLATION = ["--task", "translation", "--source-lang", "en", "--target-lang", "de"]
# The recipes' architectures and criteria, shrunk (dropout as in the recipes or higher).
MODELS = {
    "transformer_iwslt_de_en": [
        *TRANSLATION, "--arch", "transformer_iwslt_de_en", "--share-all-embeddings", *TINY_ENCODER_DECODER,
        "--dropout", "0.3", "--attention-dropout", "0.1", "--activation-dropout", "0.1",
        "--criterion", "label_smoothed_cross_entropy_rdrop", "--label-smoothing", "0.1", "--rdrop-alpha", "5",
    ],
    "bart_large": [
        *TRANSLATION, "--arch", "bart_large", "--share-all-embeddings", *TINY_ENCODER_DECODER,
        "--dropout", "0.3", "--attention-dropout", "0.1",
        "--criterion", "label_smoothed_cross_entropy_rdrop", "--label-smoothing", "0.1", "--rdrop-alpha", "0.7",
    ],
    "transformer_lm_gpt": [
        "--task", "language_modeling", "--arch", "transformer_lm_gpt", *TINY_DECODER,
        "--share-decoder-input-output-embed", "--dropout", "0.1",
        "--criterion", "label_smoothed_cross_entropy_rdrop", "--label-smoothing", "0", "--rdrop-alpha", "1",
    ],
    "transformer_lm_wiki103": [
        "--task", "language_modeling", "--arch", "transformer_lm_wiki103", *TINY_DECODER,
        "--decoder-input-dim", "16", "--decoder-output-dim", "16",
        "--adaptive-input-cutoff", "10,20", "--adaptive-softmax-cutoff", "10,20",
        "--criterion", "adaptive_loss_rdrop", "--rdrop-alpha", "1", "--ddp-backend", "legacy_ddp",
    ],
}
CHECKPOINT_FLAGS = ["--checkpoint-activations", "--offload-activations"]
STEP_SEED = 5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Dictionaries for both tasks: translation's dict.en/de.txt, language modelling's dict.txt."""
    folder = tmp_path_factory.mktemp("dictionaries")
    dictionary = make_dictionary()
    for name in ("dict.en.txt", "dict.de.txt", "dict.txt"):
        dictionary.save(str(folder / name))
    return folder


def build_from_command_line(data_dir, flags):
    """Task, float64 model in training mode and criterion, as fairseq-train builds them from ``flags``."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data_dir), "--user-dir", USER_DIR, *flags])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model).double()
    model.train()
    return task, model, task.build_criterion(cfg.criterion)


def plain_and_checkpointed(data_dir, model_name, checkpoint_flag):
    """The model without and with ``checkpoint_flag``, the second given the first's weights."""
    task, plain, criterion = build_from_command_line(data_dir, MODELS[model_name])
    _, checkpointed, _ = build_from_command_line(data_dir, [*MODELS[model_name], checkpoint_flag])
    checkpointed.load_state_dict(plain.state_dict())
    return task, criterion, plain, checkpointed


def checkpointed_layers(model):
    return sum(hasattr(module, "precheckpoint_forward") for module in model.modules())


def batch_for(task):
    if isinstance(task, TranslationTask):
        return make_sample(task, batch_size=3, src_len=7, tgt_len=6)
    return make_lm_sample(task, batch_size=3, length=7)


def training_step(criterion, model, sample):
    """One R-Drop step from a fixed RNG state: (loss, KL, {parameter: gradient})."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(STEP_SEED)
    loss, _, logging_output = criterion(model, sample)
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), torch.as_tensor(logging_output["kl_loss"]), gradients


def assert_same_gradients(actual, expected):
    assert actual.keys() == expected.keys()
    for name, gradient in expected.items():
        torch.testing.assert_close(actual[name], gradient, rtol=1e-9, atol=1e-12,
                                   msg=lambda message, name=name: f"{name}: {message}")


@pytest.mark.parametrize("checkpoint_flag", CHECKPOINT_FLAGS)
@pytest.mark.parametrize("model_name", MODELS)
def test_checkpointed_step_has_the_same_loss_kl_and_gradients(data_dir, model_name, checkpoint_flag):
    task, criterion, plain, checkpointed = plain_and_checkpointed(data_dir, model_name, checkpoint_flag)
    encoder_decoder = hasattr(plain, "encoder")
    assert checkpointed_layers(plain) == 0
    assert checkpointed_layers(checkpointed) == (4 if encoder_decoder else 2), "the flag wraps every layer"
    sample = batch_for(task)

    loss, kl, gradients = training_step(criterion, plain, sample)
    assert kl > 1e-4, "dropout must make the two passes differ, or masks would not matter"
    assert all(g.abs().sum() > 0 for name, g in gradients.items() if "layers" in name)

    checkpointed_loss, checkpointed_kl, checkpointed_gradients = training_step(criterion, checkpointed, sample)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(checkpointed_kl, kl, rtol=1e-12, atol=0)
    assert_same_gradients(checkpointed_gradients, gradients)


@pytest.mark.parametrize("model_name", MODELS)
def test_without_replaying_the_rng_state_the_gradients_would_differ(data_dir, model_name, monkeypatch):
    """The comparison above sees the masks: if the recomputation drew new ones
    (fairseq's wrapper not restoring the forward's RNG state), the forward's loss
    and KL would be unchanged but the gradients not."""
    task, criterion, plain, checkpointed = plain_and_checkpointed(data_dir, model_name, "--checkpoint-activations")
    sample = batch_for(task)
    loss, kl, gradients = training_step(criterion, plain, sample)

    import fairseq.utils

    monkeypatch.setattr(fairseq.utils, "set_rng_state", lambda state: None)
    checkpointed_loss, checkpointed_kl, checkpointed_gradients = training_step(criterion, checkpointed, sample)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(checkpointed_kl, kl, rtol=1e-12, atol=0)
    with pytest.raises(AssertionError):
        assert_same_gradients(checkpointed_gradients, gradients)


UPDATES = 6


def fairseq_train(data, save_dir, *extra):
    save_dir.mkdir()
    run_tool(
        "fairseq-train", data / "bin", "--task", "translation", *TINY_TRANSFORMER, *COMMON_TRAIN, *RDROP,
        "--label-smoothing", 0.1, "--max-tokens", 1024, "--max-update", UPDATES, "--log-interval", 1,
        "--save-dir", save_dir, "--log-file", save_dir / "train.log", *extra,
    )
    checkpoint = checkpoint_utils.load_checkpoint_to_cpu(str(save_dir / "checkpoint_last.pt"))
    return train_records(save_dir / "train.log"), checkpoint["model"]


def test_fairseq_train_with_checkpoint_activations_logs_and_learns_the_same(multi30k_bin):
    plain_log, plain_model = fairseq_train(multi30k_bin, multi30k_bin / "plain")
    checkpointed_log, checkpointed_model = fairseq_train(
        multi30k_bin, multi30k_bin / "checkpointed", "--checkpoint-activations")
    assert [r["num_updates"] for r in checkpointed_log] == [r["num_updates"] for r in plain_log] == list(
        range(1, UPDATES + 1))
    for mine, reference in zip(checkpointed_log, plain_log):
        assert reference["kl_loss"] > 0
        for key in ("loss", "nll_loss", "kl_loss"):
            # to the log's 3 decimals
            assert mine[key] == pytest.approx(reference[key], abs=1.5e-3), (mine["num_updates"], key)
    assert checkpointed_model.keys() == plain_model.keys()
    for name, value in learned_state(plain_model).items():
        torch.testing.assert_close(checkpointed_model[name], value, rtol=1e-5, atol=1e-6, msg=name)
