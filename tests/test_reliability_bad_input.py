"""Bad input to the R-Drop criteria: a clear error naming the flag or field, or
a correct, finite value; never a NaN or a crash deep inside fairseq.

The rest of the matrix is tested beside the behaviour it guards: bad alpha,
no dropout, all-padding, empty and target-less batches in tests/test_criterion.py
and tests/test_adaptive_loss_rdrop.py; half-precision and huge-alpha losses in
tests/test_loss.py; a bad warm-up length in tests/test_warmup_alpha.py; a negative alpha through
fairseq-train in tests/test_cli_end_to_end.py.
"""

import logging

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

from .helpers.fairseq_runs import COMMON_TRAIN, TINY_TRANSFORMER, run_tool
from .helpers.references import reference_rdrop_terms
from .helpers.tiny_fairseq import make_criterion, make_lm_task, make_model, make_sample, make_task, run_capturing_outputs


@pytest.fixture(scope="module")
def task():
    return make_task()


@pytest.mark.parametrize("prefix", [-1, 1024, 2000])
def test_an_ignore_prefix_size_no_batch_can_satisfy_stops_start_up_naming_the_flag(task, prefix):
    # the task's targets are at most --max-target-positions (1024) tokens long
    message = "must be >= 0, got -1" if prefix < 0 else f"--ignore-prefix-size {prefix} leaves out every target token"
    with pytest.raises(ValueError, match=message):
        make_criterion(task, ignore_prefix_size=prefix)


@pytest.mark.parametrize(
    "config, longest, flags",
    [
        ({"tokens_per_sample": 16}, 16, "--tokens-per-sample"),
        ({"tokens_per_sample": 16, "add_bos_token": True}, 17, "--tokens-per-sample plus 1 for --add-bos-token"),
        ({"tokens_per_sample": 16, "max_target_positions": 12}, 12, "--max-target-positions"),
    ],
)
def test_a_language_model_prefix_of_its_longest_sample_stops_start_up_naming_the_flag(config, longest, flags):
    # MonolingualDataset's targets are --tokens-per-sample tokens at most, one
    # more behind --add-bos-token, and the model takes --max-target-positions
    task = make_lm_task(**config)
    make_criterion(task, ignore_prefix_size=longest - 1)
    with pytest.raises(ValueError) as refused:
        make_criterion(task, ignore_prefix_size=longest)
    assert f"--ignore-prefix-size {longest} leaves out every target token: this task's targets are at most " \
        f"{longest} tokens long ({flags}, end of sentence included)" in str(refused.value)


@pytest.mark.parametrize("prefix", [6, 9])
def test_a_training_batch_with_nothing_after_the_prefix_counts_as_empty_with_one_warning(task, prefix, caplog):
    model, criterion = make_model(task), make_criterion(task, ignore_prefix_size=prefix)
    real = criterion(model, make_sample(task, tgt_len=prefix + 2))[2]
    with caplog.at_level(logging.WARNING):
        outputs = [criterion(model, make_sample(task, tgt_len=6, seed=seed)) for seed in (1, 2)]
    for objective, sample_size, log in outputs:
        objective.backward()
        assert objective.item() == 0.0 and sample_size == 0 and log.keys() == real.keys()
        assert all(value == 0 for value in log.values())
    assert all(p.grad is None or p.grad.eq(0).all() for p in model.parameters())
    [warning] = [r.getMessage() for r in caplog.records if "leaves no target token" in r.getMessage()]
    assert f"--ignore-prefix-size {prefix} leaves no target token in a training batch whose targets are " \
        "at most 6 tokens long" in warning


def test_ignore_prefix_size_below_the_target_length_trains(task):
    criterion = make_criterion(task, ignore_prefix_size=5)
    objective, _, log = criterion(make_model(task), make_sample(task, tgt_len=6))
    assert torch.isfinite(objective) and objective > 0 and log["kl_loss"] > 0


@pytest.mark.parametrize("alpha", [0.0, 5.0])
def test_validation_and_alpha_zero_of_a_batch_with_nothing_after_the_prefix_are_fairseqs(task, alpha):
    model = make_model(task)
    model.train(alpha == 0.0)
    sample = make_sample(task, tgt_len=6)
    fairseq = LabelSmoothedCrossEntropyCriterion(task, False, 0.1, ignore_prefix_size=6, report_accuracy=True)
    torch.manual_seed(0)
    ours = make_criterion(task, rdrop_alpha=alpha, ignore_prefix_size=6)(model, sample)
    torch.manual_seed(0)
    theirs = fairseq(model, sample)
    assert torch.equal(ours[0], theirs[0]) and ours[1] == theirs[1] == sample["ntokens"]
    assert ours[2].keys() == theirs[2].keys()
    assert all(torch.equal(torch.as_tensor(ours[2][k]), torch.as_tensor(theirs[2][k])) for k in ours[2])


class DropsTheSecondCopy(torch.nn.Module):
    """A model that returns only as many rows as the batch it was built for,
    whatever it is given: the doubled batch comes back un-doubled."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **net_input):
        logits, extra = self.model(**net_input)
        return logits[: logits.size(0) // 2], extra

    def get_targets(self, sample, net_output):
        return sample["target"]


def test_a_model_whose_output_is_not_twice_the_batch_is_rejected_naming_both_sizes(task):
    criterion = make_criterion(task)
    with pytest.raises(RuntimeError, match=r"expected the model to return 2 x 3 rows .* got 3"):
        criterion(DropsTheSecondCopy(make_model(task)), make_sample(task, batch_size=3))


def has_cpu_dropout(dtype):
    try:
        torch.nn.functional.dropout(torch.ones(2, dtype=dtype), 0.5, training=True)
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_with_huge_logits_gives_finite_loss_kl_and_gradients(task, dtype):
    if not has_cpu_dropout(dtype):
        pytest.skip(f"torch {torch.__version__} has no {dtype} dropout on the CPU (a GPU runs this case)")
    model = make_model(task).to(dtype)
    with torch.no_grad():
        # the output projection is the shared embedding: logits in the thousands
        model.decoder.output_projection.weight.mul_(300.0)
    objective, _, log = make_criterion(task, rdrop_alpha=5.0)(model, make_sample(task, seed=3))
    objective.backward()
    assert torch.isfinite(objective) and torch.isfinite(log["kl_loss"]) and log["kl_loss"] > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_an_alpha_so_large_that_the_kl_dominates_gives_the_exact_objective_and_finite_gradients(task):
    model, sample = make_model(task), make_sample(task, seed=4)
    objective, _, log, outputs = run_capturing_outputs(make_criterion(task, rdrop_alpha=1e8), model, sample)
    objective.backward()
    ref = reference_rdrop_terms(outputs[0].detach(), sample["target"], task.target_dictionary.pad(), 0.1, 1e8)
    torch.testing.assert_close(objective.double(), ref["objective"], rtol=1e-5, atol=0.0)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--rdrop-alpha-warmup-updates", "-5"], "--rdrop-alpha-warmup-updates must be a whole number of updates >= 0, got -5"),
        (["--ignore-prefix-size", "64", "--max-target-positions", "64"],
         "--ignore-prefix-size 64 leaves out every target token: this task's targets are at most 64 tokens long"),
    ],
)
def test_fairseq_train_stops_with_the_flag_named(multi30k_bin, flags, message):  # noqa: F811
    save = multi30k_bin / "bad-input"
    proc = run_tool(
        "fairseq-train", multi30k_bin / "bin", "--task", "translation", *TINY_TRANSFORMER, *COMMON_TRAIN,
        "--criterion", "label_smoothed_cross_entropy_rdrop", *flags, "--max-update", 1, "--max-tokens", 1024,
        "--save-dir", save, "--no-save", check=False, timeout=180,
    )
    assert proc.returncode != 0 and message in proc.stdout, proc.stdout[-3000:]
    assert "train_inner" not in proc.stdout, "no update may complete"


def test_fairseq_train_of_a_language_model_stops_when_the_prefix_covers_every_sample(multi30k_bin):
    # the German side of the Multi30k slice as a language-modelling corpus
    data = multi30k_bin / "lm-bin"
    data.mkdir(exist_ok=True)
    for split in ("train", "valid"):
        for ext in ("bin", "idx"):
            (data / f"{split}.{ext}").write_bytes((multi30k_bin / "bin" / f"{split}.en-de.de.{ext}").read_bytes())
    (data / "dict.txt").write_bytes((multi30k_bin / "bin" / "dict.de.txt").read_bytes())
    proc = run_tool(
        "fairseq-train", data, "--task", "language_modeling", "--arch", "transformer_lm", "--decoder-layers", 1,
        "--decoder-embed-dim", 32, "--decoder-ffn-embed-dim", 64, "--decoder-attention-heads", 2, "--dropout", 0.1,
        *COMMON_TRAIN, "--criterion", "label_smoothed_cross_entropy_rdrop", "--rdrop-alpha", 1,
        "--tokens-per-sample", 16, "--ignore-prefix-size", 16, "--max-update", 1, "--max-tokens", 512,
        "--save-dir", multi30k_bin / "lm-bad-input", "--no-save", check=False, timeout=180,
    )
    message = ("--ignore-prefix-size 16 leaves out every target token: this task's targets are at most 16 tokens long "
               "(--tokens-per-sample, end of sentence included)")
    assert proc.returncode != 0 and message in proc.stdout, proc.stdout[-3000:]
    assert "train_inner" not in proc.stdout, "no update may complete"
