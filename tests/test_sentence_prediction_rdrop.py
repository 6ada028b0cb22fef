"""sentence_prediction_rdrop on a tiny real RoBERTa with a classification head.

References are computed in float64 from the formula, from the classification
head's output for the doubled batch (captured with a forward hook: pass 1 in
the first half), and compared with fairseq's own ``sentence_prediction`` where
R-Drop is off. The command-line tests train with fairseq-train on a small
binarized sentence-prediction dataset written here.
"""

import argparse
import json
import logging
import math
import random
from collections import defaultdict

import pytest
import torch
from fairseq import checkpoint_utils, options
from fairseq.criterions.sentence_prediction import SentencePredictionConfig, SentencePredictionCriterion
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.logging import metrics
from fairseq.models.roberta import RobertaModel
from fairseq.models.roberta.model import base_architecture
from fairseq.tasks.sentence_prediction import SentencePredictionConfig as TaskConfig
from fairseq.tasks.sentence_prediction import SentencePredictionTask
from fairseq.trainer import Trainer

import rdrop_fairseq  # noqa: F401  (fairseq's loader reads fairseq's checkpoint types under weights_only)
from rdrop_fairseq.criterions.sentence_prediction_rdrop import (
    SentencePredictionRDrop,
    SentencePredictionRDropConfig,
)

from .helpers.distributed import finish, launch, train_on_two_ranks, write_recording_criterion
from .helpers.fairseq_runs import COMMON_TRAIN, learned_state, run_tool, fairseq_script, train_records, write_lines
from .helpers.references import reference_symmetric_kl
from .helpers.tiny_fairseq import (
    assert_one_pass_equal, assert_sample_left_untouched, make_dictionary, run_capturing_outputs,
)

HEAD = "sentence_classification_head"
# (regression, outputs of the head)
KINDS = {"classification": (False, 3), "regression": (True, 1), "two-value regression": (True, 2)}


def make_task(regression=False, num_classes=3):
    dictionary = make_dictionary()
    dictionary.add_symbol("<mask>")
    labels = dictionary
    if not regression:
        labels = Dictionary()
        for label in range(num_classes):
            labels.add_symbol(str(label))
    config = TaskConfig(
        data="unused", num_classes=num_classes, regression_target=regression, classification_head_name=HEAD, seed=1
    )
    return SentencePredictionTask(config, dictionary, labels)


def make_model(task, dropout=0.3, seed=0):
    """A one-layer RoBERTa with the task's classification head, seeded, in training mode."""
    args = argparse.Namespace(
        encoder_layers=1, encoder_embed_dim=16, encoder_ffn_embed_dim=32, encoder_attention_heads=2,
        max_positions=32, dropout=dropout, attention_dropout=dropout, pooler_dropout=dropout,
    )
    base_architecture(args)
    torch.manual_seed(seed)
    model = RobertaModel.build_model(args, task)
    model.register_classification_head(HEAD, num_classes=task.cfg.num_classes)
    model.train()
    return model


def make_criterion(task, rdrop_alpha=1.0, **options):
    config = SentencePredictionRDropConfig(
        classification_head_name=HEAD, regression_target=task.cfg.regression_target, rdrop_alpha=rdrop_alpha, **options
    )
    return SentencePredictionRDrop(config, task)


def fairseq_criterion(task, **options):
    config = SentencePredictionConfig(
        classification_head_name=HEAD, regression_target=task.cfg.regression_target, **options
    )
    return SentencePredictionCriterion(config, task)


def make_sample(task, batch_size=4, length=7, seed=0):
    """Right-padded sentences behind <s>, of varied lengths, and their targets as the
    task collates them: (B, 1) class indices, or (B, outputs) floats for regression."""
    gen = torch.Generator().manual_seed(seed)
    d = task.source_dictionary
    lengths = torch.randint(3, length + 1, (batch_size,), generator=gen)
    if batch_size:
        lengths[0] = length
    tokens = torch.full((batch_size, length), d.pad(), dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        tokens[row, :n] = torch.randint(d.nspecial, len(d) - 1, (n,), generator=gen)
        tokens[row, 0], tokens[row, n - 1] = d.bos(), d.eos()
    if task.cfg.regression_target:
        target = torch.randn(batch_size, task.cfg.num_classes, generator=gen)
    else:
        target = torch.randint(0, task.cfg.num_classes, (batch_size, 1), generator=gen)
    return {
        "id": torch.arange(batch_size),
        "nsentences": batch_size,
        "ntokens": int(lengths.sum()),
        "net_input": {"src_tokens": tokens, "src_lengths": lengths},
        "target": target,
    }


def reference(logits, target, alpha, regression):
    """The objective and logged sums from the doubled batch's head outputs, in float64."""
    first, second = logits.double().chunk(2)
    if regression:
        values = target.double().view(first.shape)
        task_loss = ((first - values) ** 2).sum() + ((second - values) ** 2).sum()
        kl = ((first - second) ** 2).sum()
        ncorrect = None
    else:
        labels = target.view(-1)
        rows = torch.arange(labels.numel())
        task_loss = sum(-half.log_softmax(-1)[rows, labels].sum() for half in (first, second))
        kl = reference_symmetric_kl(first, second).sum()
        ncorrect = sum(int(half.argmax(-1).eq(labels).sum()) for half in (first, second)) / 2
    return {"objective": task_loss + alpha * kl, "loss": task_loss / 2, "kl_loss": kl, "ncorrect": ncorrect}


@pytest.fixture(params=list(KINDS))
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def task():
    return make_task()


def test_training_objective_is_both_passes_loss_plus_alpha_times_the_kl_in_float64(kind):
    regression, outputs = KINDS[kind]
    task = make_task(regression, outputs)
    model, criterion = make_model(task), make_criterion(task, rdrop_alpha=2.5)
    sample = make_sample(task)
    objective, sample_size, log, captured = run_capturing_outputs(criterion, model, sample)
    assert len(captured) == 1, "both passes must run in one forward call"
    logits = captured[0]
    assert logits.shape == (2 * 4, outputs)
    ref = reference(logits.detach(), sample["target"], 2.5, regression)
    assert ref["kl_loss"] > 0
    assert sample_size == log["sample_size"] == log["nsentences"] == sample["target"].numel()
    torch.testing.assert_close(objective.double(), ref["objective"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["loss"].double(), ref["loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["kl_loss"].double(), ref["kl_loss"], rtol=1e-5, atol=1e-6)


def test_gradient_flows_through_both_passes_as_in_the_float64_reference(kind):
    regression, outputs = KINDS[kind]
    task = make_task(regression, outputs)
    model, criterion = make_model(task), make_criterion(task, rdrop_alpha=2.0)
    sample = make_sample(task, seed=1)
    objective, _, _, captured = run_capturing_outputs(criterion, model, sample)
    objective.backward()
    logits = captured[0]
    leaf = logits.detach().double().requires_grad_()
    reference(leaf, sample["target"], 2.0, regression)["objective"].backward()
    torch.testing.assert_close(logits.grad.double(), leaf.grad, rtol=1e-4, atol=1e-7)
    assert logits.grad[:4].abs().sum() > 0 and logits.grad[4:].abs().sum() > 0


def test_one_forward_of_the_doubled_batch_through_the_head_with_independent_dropout_masks(task):
    model, criterion = make_model(task), make_criterion(task)
    sample = make_sample(task, seed=2)
    seen = {}
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    try:
        _, _, log, captured = run_capturing_outputs(criterion, model, sample)
    finally:
        handle.remove()
    for key in ("src_tokens", "src_lengths"):
        original = sample["net_input"][key]
        assert torch.equal(seen[key], torch.cat([original, original]))
    assert seen["features_only"] is True and seen["classification_head_name"] == HEAD
    first, second = captured[0].detach().chunk(2)
    assert not torch.allclose(first, second)
    assert log["kl_loss"] > 0


def test_logged_loss_and_accuracy_count_are_the_two_passes_average(task):
    model, criterion = make_model(task), make_criterion(task, rdrop_alpha=1.0)
    sample = make_sample(task, batch_size=8, seed=3)
    _, _, log, captured = run_capturing_outputs(criterion, model, sample)
    ref = reference(captured[0].detach(), sample["target"], 1.0, False)
    assert set(log) == {"loss", "kl_loss", "ntokens", "nsentences", "sample_size", "ncorrect"}
    assert float(log["ncorrect"]) == ref["ncorrect"]
    assert (log["ntokens"], log["nsentences"], log["sample_size"]) == (sample["ntokens"], 8, 8)


def _reduced(logging_outputs):
    with metrics.aggregate() as agg:
        SentencePredictionRDrop.reduce_metrics(logging_outputs)
        return agg.get_smoothed_values()


def test_reduce_metrics_gives_fairseqs_figures_and_the_kl_per_sentence_in_base_2(task):
    model, criterion = make_model(task), make_criterion(task, rdrop_alpha=1.5)
    runs = [criterion(model, make_sample(task, seed=s)) for s in (4, 5)]
    logs = [log for _, _, log in runs]
    reduced = _reduced(logs)
    ln2 = math.log(2)
    sentences = sum(log["sample_size"] for log in logs)
    ntokens = sum(log["ntokens"] for log in logs)
    loss = sum(float(log["loss"]) for log in logs)
    assert reduced["loss"] == pytest.approx(loss / sentences / ln2, abs=1e-3)
    assert reduced["nll_loss"] == pytest.approx(loss / ntokens / ln2, abs=1e-3)
    assert reduced["kl_loss"] == pytest.approx(sum(float(log["kl_loss"]) for log in logs) / sentences / ln2, abs=1e-3)
    # fairseq 0.12.2 logs accuracy to one decimal, later fairseq to three; rounding halves may go either way
    assert reduced["accuracy"] == pytest.approx(100 * sum(float(log["ncorrect"]) for log in logs) / sentences, abs=0.0501)
    # the objective per sentence in bits is 2 * loss + alpha * kl_loss
    objective = sum(float(objective) for objective, _, _ in runs)
    assert 2 * reduced["loss"] + 1.5 * reduced["kl_loss"] == pytest.approx(objective / sentences / ln2, abs=1e-2)
    assert SentencePredictionRDrop.logging_outputs_can_be_summed()


def test_logging_outputs_are_summed_across_workers_as_fairseqs_trainer_sums_them(task, one_rank_process_group):
    model = make_model(task)
    criterion = make_criterion(task, rdrop_alpha=2.0, rdrop_alpha_warmup_updates=10)
    criterion.set_num_updates(4)
    workers = [criterion(model, make_sample(task, batch_size=b, seed=s))[2] for b, s in ((4, 6), (3, 7))]
    assert type(task).logging_outputs_can_be_summed(criterion)
    trainer = argparse.Namespace(device=torch.device("cpu"), data_parallel_process_group=one_rank_process_group)
    (summed,), _ = Trainer._fast_stat_sync_sum(trainer, workers)
    one_by_one, after_the_sum = _reduced(workers), _reduced([summed])
    assert set(one_by_one) >= {"loss", "nll_loss", "kl_loss", "accuracy", "rdrop_alpha"}
    assert after_the_sum == pytest.approx(one_by_one, rel=1e-6)
    assert one_by_one["rdrop_alpha"] == pytest.approx(2.0 * 4 / 10)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_alpha_zero_is_exactly_fairseqs_sentence_prediction_with_one_pass(kind):
    task = make_task(*KINDS[kind])
    sample = make_sample(task, seed=8)
    results = []
    for criterion in (make_criterion(task, rdrop_alpha=0.0), fairseq_criterion(task)):
        model = make_model(task)
        torch.manual_seed(123)
        objective, sample_size, log, captured = run_capturing_outputs(criterion, model, sample)
        objective.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((objective, sample_size, log, captured, grads))
    assert_one_pass_equal(*results, sample)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize(
    "kind, report", [("classification", "report_acc_and_f1"), ("regression", "report_pearson_and_spearman")]
)
def test_validation_is_exactly_fairseqs_sentence_prediction_with_one_pass(kind, report, alpha):
    if report not in SentencePredictionConfig.__dataclass_fields__:
        pytest.skip(f"this fairseq's sentence_prediction has no --{report.replace('_', '-')} (added after 0.12.2)")
    task = make_task(*KINDS[kind])
    model = make_model(task).eval()
    sample = make_sample(task, seed=9)
    criterion = make_criterion(task, rdrop_alpha=alpha, **{report: True})
    with torch.no_grad():
        ours, size, log, captured = run_capturing_outputs(criterion, model, sample)
        theirs, their_size, their_log = fairseq_criterion(task, **{report: True})(model, sample)
    assert len(captured) == 1 and captured[0].size(0) == sample["target"].size(0)
    assert torch.equal(ours, theirs) and size == their_size
    assert log.keys() == their_log.keys() and {"pred", "targ"} <= log.keys() and "kl_loss" not in log
    assert all(torch.equal(torch.as_tensor(log[k]), torch.as_tensor(their_log[k])) for k in log)


def test_alpha_warms_up_with_the_update_count_and_is_logged(task):
    model = make_model(task)
    criterion = make_criterion(task, rdrop_alpha=3.0, rdrop_alpha_warmup_updates=8)
    sample = make_sample(task, seed=10)
    for done, alpha in ((0, 0.0), (2, 0.75), (8, 3.0), (20, 3.0)):
        criterion.set_num_updates(done)
        objective, _, log, captured = run_capturing_outputs(criterion, model, sample)
        ref = reference(captured[0].detach(), sample["target"], alpha, False)
        torch.testing.assert_close(objective.double(), ref["objective"], rtol=1e-5, atol=1e-5)
        assert log["rdrop_alpha_x_nsentences"] == pytest.approx(alpha * 4)
        assert _reduced([log])["rdrop_alpha"] == pytest.approx(alpha)


def test_mha_and_ffn_penalties_are_part_of_each_passs_loss_and_logged_as_fairseq_logs_them(task):
    model = make_model(task)
    model.args.mha_reg_scale_factor, model.args.ffn_reg_scale_factor = 0.01, 0.02
    sample = make_sample(task, seed=11)
    objective, _, log, captured = run_capturing_outputs(make_criterion(task, rdrop_alpha=1.5), model, sample)
    ref = reference(captured[0].detach(), sample["target"], 1.5, False)
    with torch.no_grad():
        penalty = model._get_adaptive_head_loss() + model._get_adaptive_ffn_loss()
        model.eval()
        their_log = fairseq_criterion(task)(model, sample)[2]
    assert penalty > 0
    torch.testing.assert_close(objective.double(), ref["objective"] + 2 * penalty.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["loss"].double(), ref["loss"] + penalty.double(), rtol=1e-5, atol=1e-5)
    for key in ("mha_reg_loss", "ffn_reg_loss"):
        torch.testing.assert_close(log[key], their_log[key].detach())
    assert {"mha_reg_loss", "ffn_reg_loss"} <= _reduced([log]).keys()


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_an_empty_batch_gives_zero_loss_a_working_backward_and_the_usual_logging_keys(kind):
    task = make_task(*KINDS[kind])
    model, criterion = make_model(task), make_criterion(task)
    objective, sample_size, log = criterion(model, make_sample(task, batch_size=0))
    objective.backward()
    assert sample_size == 0 and objective.item() == 0.0 and float(log["kl_loss"]) == 0.0
    assert set(log) == {"loss", "kl_loss", "ntokens", "nsentences", "sample_size"} | (
        set() if KINDS[kind][0] else {"ncorrect"}
    )
    assert any(p.grad is not None for p in model.parameters())
    assert all(p.grad is None or p.grad.eq(0).all() for p in model.parameters())


def test_a_batch_without_target_is_rejected_with_a_clear_error(task):
    sample = make_sample(task)
    del sample["target"]
    with pytest.raises(ValueError, match="needs batches with a 'target'"):
        make_criterion(task)(make_model(task), sample)


def test_a_model_without_the_classification_head_is_rejected_naming_the_flag(task):
    model = make_model(task)
    del model.classification_heads[HEAD]
    with pytest.raises(ValueError, match="--classification-head-name"):
        make_criterion(task)(model, make_sample(task))


@pytest.mark.parametrize(
    "options, flag",
    [({"rdrop_alpha": -1.0}, "--rdrop-alpha"), ({"rdrop_alpha": float("nan")}, "--rdrop-alpha"),
     ({"rdrop_alpha_warmup_updates": -3}, "--rdrop-alpha-warmup-updates")],
)
def test_bad_alpha_or_warmup_is_rejected_with_the_flag_named(task, options, flag):
    with pytest.raises(ValueError, match=flag):
        make_criterion(task, **options)


def test_the_command_line_flags_reach_the_criterion_and_the_tasks_interpolations(task):
    argv = [
        "data", "--task", "sentence_prediction", "--arch", "roberta", "--num-classes", "1",
        "--criterion", "sentence_prediction_rdrop", "--rdrop-alpha", "0.5",
        "--classification-head-name", "sts_head", "--regression-target",
    ]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    assert (cfg.criterion._name, cfg.criterion.rdrop_alpha, cfg.criterion.rdrop_alpha_warmup_updates) == (
        "sentence_prediction_rdrop", 0.5, 0,
    )
    assert (cfg.task.classification_head_name, cfg.task.regression_target) == ("sts_head", True)
    criterion = SentencePredictionRDrop.build_criterion(cfg.criterion, task)
    assert (criterion.classification_head_name, criterion.regression_target, criterion.rdrop_alpha) == (
        "sts_head", True, 0.5,
    )
    field = SentencePredictionRDropConfig.__dataclass_fields__["rdrop_alpha"]
    assert field.default == 1.0 and "1.0" in field.metadata["help"]


def test_a_model_without_dropout_warns_once_that_the_kl_is_zero(task, caplog):
    model, criterion = make_model(task, dropout=0.0), make_criterion(task)
    with caplog.at_level(logging.WARNING):
        logs = [criterion(model, make_sample(task, seed=s))[2] for s in (12, 13)]
    warnings = [r for r in caplog.records if "KL term is identically zero" in r.getMessage()]
    assert len(warnings) == 1 and "--rdrop-alpha" in warnings[0].getMessage()
    assert all(log["kl_loss"].item() == 0.0 for log in logs)


def test_the_callers_sample_is_not_mutated(task):
    model, criterion = make_model(task), make_criterion(task)
    sample = make_sample(task, seed=14)
    assert_sample_left_untouched(sample, lambda: criterion(model, sample)[0].backward())


# ---------------------------------------------------------------------------
# fairseq-train on a small sentence-prediction dataset

WORDS = [f"w{i}" for i in range(24)]
TRAIN_SENTENCES, VALID_SENTENCES = 64, 16


def sentences_and_labels(count, rng):
    """Random sentences; the class is whether w0-w11 outnumber w12-w23, and the
    regression value the share of w0-w11, so both are learnable."""
    lines, classes, values = [], [], []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        low = sum(WORDS.index(w) < 12 for w in words)
        lines.append(" ".join(words))
        classes.append("pos" if 2 * low > len(words) else "neg")
        values.append(f"{5.0 * low / len(words):.3f}")
    return lines, classes, values


@pytest.fixture(scope="module")
def glue_like(tmp_path_factory):
    """fairseq's sentence_prediction layout, as examples/roberta/preprocess_GLUE_tasks.sh
    writes it: input0/ binarized with --only-source, and label/ binarized with its
    dictionary (classification) or as raw <split>.label lines of floats (regression)."""
    root = tmp_path_factory.mktemp("glue_like")
    rng = random.Random(0)
    raw = {split: sentences_and_labels(n, rng) for split, n in (("train", TRAIN_SENTENCES), ("valid", VALID_SENTENCES))}
    for split, (lines, classes, _) in raw.items():
        write_lines(root / f"{split}.input0", lines)
        write_lines(root / f"{split}.label", classes)
    classification, regression = root / "classification", root / "regression"
    for name in ("input0", "label"):
        run_tool(
            "fairseq-preprocess", "--only-source", "--trainpref", root / f"train.{name}",
            "--validpref", root / f"valid.{name}", "--destdir", classification / name, "--workers", 1,
        )
    (regression / "label").mkdir(parents=True)
    (regression / "input0").symlink_to(classification / "input0")
    for split, (_, _, values) in raw.items():
        write_lines(regression / "label" / f"{split}.label", values)
    return {"classification": classification, "regression": regression}


TINY_ROBERTA = [
    "--arch", "roberta", "--encoder-layers", 1, "--encoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64,
    "--encoder-attention-heads", 2, "--max-positions", 32, "--dropout", 0.3, "--attention-dropout", 0.1,
    "--pooler-dropout", 0.1,
]
SP_RDROP = ["--criterion", "sentence_prediction_rdrop", "--rdrop-alpha", 1]


def sentence_prediction_args(data, save_dir, max_update, regression=False, log_name="train.log"):
    task = ["--task", "sentence_prediction", "--init-token", 0, "--num-classes", 1 if regression else 2]
    if regression:
        task.append("--regression-target")
    return [
        data, *task, *TINY_ROBERTA, *COMMON_TRAIN, *SP_RDROP, "--batch-size", 8, "--max-update", max_update,
        "--required-batch-size-multiple", 1, "--log-interval", 1, "--save-dir", save_dir,
        "--log-file", save_dir / log_name,
    ]


def train(args):
    args[args.index("--save-dir") + 1].mkdir(exist_ok=True)
    run_tool("fairseq-train", *args)
    return train_records(args[args.index("--log-file") + 1])


K = 3
WARMUP = 4


@pytest.fixture(scope="module")
def classification_runs(glue_like, tmp_path_factory):
    """Classification with alpha warm-up: an uninterrupted run of 2K updates and
    one stopped at K and resumed from checkpoint_last.pt."""
    root = tmp_path_factory.mktemp("sp_runs")
    data = glue_like["classification"]
    warmup = ["--rdrop-alpha-warmup-updates", WARMUP]
    whole, resumed = root / "whole", root / "resumed"
    records = train([*sentence_prediction_args(data, whole, 2 * K), *warmup])
    train([*sentence_prediction_args(data, resumed, K, log_name="first.log"), *warmup])
    resumed_records = train([*sentence_prediction_args(data, resumed, 2 * K, log_name="second.log"), *warmup])
    return {"whole": (whole, records), "resumed": (resumed, resumed_records)}


def test_fairseq_train_classification_logs_the_kl_in_training_and_accuracy_in_validation(classification_runs):
    save_dir, records = classification_runs["whole"]
    assert [r["num_updates"] for r in records] == list(range(1, 2 * K + 1))
    # the first update runs with the warmed-up alpha 0, but the KL is measured all the same
    assert all(r["kl_loss"] > 0 and {"loss", "nll_loss", "accuracy"} <= r.keys() for r in records)
    assert [r["rdrop_alpha"] for r in records] == pytest.approx([min(1.0, n / WARMUP) for n in range(2 * K)])
    [valid] = train_records(save_dir / "train.log", "valid")
    assert {"valid_loss", "valid_accuracy"} <= valid.keys() and "valid_kl_loss" not in valid
    assert 0 <= valid["valid_accuracy"] <= 100


def test_fairseq_train_regression_logs_the_squared_difference_as_kl_loss(glue_like, tmp_path):
    records = train(sentence_prediction_args(glue_like["regression"], tmp_path / "save", 4, regression=True))
    assert [r["num_updates"] for r in records] == [1, 2, 3, 4]
    assert all(r["kl_loss"] > 0 and "accuracy" not in r for r in records)
    [valid] = train_records(tmp_path / "save" / "train.log", "valid")
    assert valid["valid_loss"] > 0 and "valid_accuracy" not in valid


def test_a_resumed_run_reaches_the_uninterrupted_runs_parameters_and_losses(classification_runs):
    (whole_dir, whole), (resumed_dir, resumed) = classification_runs["whole"], classification_runs["resumed"]
    states = [checkpoint_utils.load_checkpoint_to_cpu(str(d / "checkpoint_last.pt")) for d in (whole_dir, resumed_dir)]
    assert [s["optimizer_history"][-1]["num_updates"] for s in states] == [2 * K, 2 * K]
    for name, value in learned_state(states[0]["model"]).items():
        torch.testing.assert_close(states[1]["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert [r["num_updates"] for r in resumed] == list(range(K + 1, 2 * K + 1))
    for mine, reference_record in zip(resumed, whole[K:]):
        for key in ("loss", "kl_loss", "accuracy", "rdrop_alpha"):
            assert mine[key] == pytest.approx(reference_record[key], abs=1.5e-3), (mine["num_updates"], key)


UPDATES = 4


@pytest.fixture(scope="module")
def distributed_runs(glue_like, tmp_path_factory):
    """Two gloo ranks with --batch-size 4, and one rank accumulating two such batches."""
    root = tmp_path_factory.mktemp("sp_distributed")
    user_dir = write_recording_criterion(
        root / "sp_rdrop_recording", "sp_rdrop_recording", "rdrop_fairseq.criterions.sentence_prediction_rdrop",
        "SentencePredictionRDrop", "SentencePredictionRDropConfig", "nsentences")

    def args(save_dir):
        save_dir.mkdir()
        return [
            *sentence_prediction_args(glue_like["classification"], save_dir, UPDATES), "--batch-size", 4,
            "--user-dir", user_dir, "--criterion", "sp_rdrop_recording", "--no-save", "--disable-validation",
        ]

    two, one = root / "two-ranks", root / "one-rank"
    train_on_two_ranks(args(two), env={"RDROP_RECORD": str(two / "record")})
    finish([launch([fairseq_script("fairseq-train"), *args(one), "--update-freq", 2], {"RDROP_RECORD": str(one / "record")})])
    return {name: (train_records(d / "train.log"), micro_batches(d)) for name, d in (("two", two), ("one", one))}


def micro_batches(save_dir):
    """{(update, sum of the batch's ids): recorded logging output} over every process."""
    batches = {}
    for path in save_dir.glob("record.*"):
        for record in map(json.loads, path.read_text().splitlines()):
            batches[record["update"], record["ids"]] = record
    return batches


def test_two_gloo_ranks_train_as_one_rank_accumulating_the_same_two_batches(distributed_runs):
    (two, two_batches), (one, one_batches) = distributed_runs["two"], distributed_runs["one"]
    assert [r["num_updates"] for r in two] == [r["num_updates"] for r in one] == list(range(1, UPDATES + 1))
    assert [r["bsz"] for r in two] == [r["bsz"] for r in one] == [8] * UPDATES
    assert two_batches.keys() == one_batches.keys() and len(two_batches) == 2 * UPDATES
    for key, record in two_batches.items():
        assert record["kl_loss"] == pytest.approx(one_batches[key]["kl_loss"], rel=1e-5), key
    per_update = defaultdict(float)
    for (update, _), record in two_batches.items():
        per_update[update] += record["kl_loss"]
    for a, b in zip(two, one):
        for key in ("loss", "nll_loss", "kl_loss", "accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1.5e-3 if key != "accuracy" else 0.051), (a["num_updates"], key)
        # the logged kl_loss is the sum over both ranks' micro-batches, per sentence, in bits
        assert a["kl_loss"] == pytest.approx(per_update[a["num_updates"]] / 8 / math.log(2), abs=6e-4)
