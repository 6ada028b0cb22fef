"""Bad input to the R-Drop criteria: a clear error naming the flag or field, or
a correct, finite value; never a NaN or a crash deep inside fairseq.

The rest of the matrix is tested beside the behaviour it guards: bad alpha,
no dropout, all-padding, empty and target-less batches in tests/test_criterion.py
and tests/test_adaptive_loss_rdrop.py; half-precision and huge-alpha losses in
tests/test_loss.py; a bad warm-up length in tests/test_warmup_alpha.py; a negative alpha through
fairseq-train in tests/test_cli_end_to_end.py.
"""

import pytest
import torch

from .cli import COMMON_TRAIN, TINY_TRANSFORMER, run_tool
from .tiny_fairseq import make_criterion, make_model, make_sample, make_task


@pytest.fixture(scope="module")
def task():
    return make_task()


@pytest.mark.parametrize("prefix", [6, 9])
@pytest.mark.parametrize("training", [True, False])
def test_ignore_prefix_size_at_or_beyond_the_target_length_names_the_flag(task, prefix, training):
    model = make_model(task)
    model.train(training)
    criterion = make_criterion(task, ignore_prefix_size=prefix)
    with pytest.raises(ValueError, match=f"--ignore-prefix-size {prefix} drops every target token of this batch"):
        criterion(model, make_sample(task, tgt_len=6))


def test_ignore_prefix_size_below_the_target_length_trains(task):
    criterion = make_criterion(task, ignore_prefix_size=5)
    objective, _, log = criterion(make_model(task), make_sample(task, tgt_len=6))
    assert torch.isfinite(objective) and objective > 0 and log["kl_loss"] > 0


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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_with_huge_logits_gives_finite_loss_kl_and_gradients(task, dtype):
    model = make_model(task).to(dtype)
    with torch.no_grad():
        # the output projection is the shared embedding: logits in the thousands
        model.decoder.output_projection.weight.mul_(300.0)
    objective, _, log = make_criterion(task, rdrop_alpha=5.0)(model, make_sample(task, seed=3))
    objective.backward()
    assert torch.isfinite(objective) and torch.isfinite(log["kl_loss"]) and log["kl_loss"] > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_an_alpha_so_large_that_the_kl_dominates_stays_finite(task):
    model = make_model(task)
    objective, _, log = make_criterion(task, rdrop_alpha=1e8)(model, make_sample(task, seed=4))
    objective.backward()
    assert torch.isfinite(objective) and objective > 1e6 * log["kl_loss"]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--rdrop-alpha-warmup-updates", "-5"], "--rdrop-alpha-warmup-updates must be a whole number of updates >= 0, got -5"),
        (["--ignore-prefix-size", "1000"], "--ignore-prefix-size 1000 drops every target token of this batch"),
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
