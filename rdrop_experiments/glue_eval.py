"""Dev-set figures of a GLUE run: the training log's best validation, and checkpoint_best.pt re-scored."""

# fairseq-train validates on the dev set ("valid"; MNLI: matched as valid and
# mismatched as valid1) after every epoch and keeps checkpoint_best.pt by one
# figure of the first subset: accuracy (larger is better), for STS-B the loss
# (smaller is better), ties going to the later validation as fairseq's
# `a >= b` / `a <= b` has it. This module
#
# 1. reads the `valid` records of the run's log (fairseq's --log-format json
#    output) and prints that best validation, with every subset's figures at
#    the same update; and
# 2. with --checkpoint, loads checkpoint_best.pt with fairseq's own loader,
#    predicts every dev example (fp16 on a GPU where training used it) and
#    prints the metrics GLUE reports: accuracy, F1 of label "1" (MRPC, QQP),
#    Matthews correlation (CoLA), Pearson and Spearman correlation (STS-B),
#    all x100. fairseq's logs carry these only with --report-* flags, which
#    fail under several GPUs (their lists cannot be summed across workers).
#
#   python -m rdrop_experiments.glue_eval RTE --log runs/checkpoints/.../train.log \
#       --checkpoint runs/checkpoints/.../checkpoint_best.pt --data runs/data-bin/glue/RTE-bin

import argparse
import json
import math
import sys
from pathlib import Path

from rdrop_experiments.errors import BadInput, run_script
from rdrop_experiments.fairseq_logs import read_records

TASKS = ("MNLI", "QNLI", "QQP", "RTE", "SST-2", "MRPC", "CoLA", "STS-B")
# the dev subsets fairseq-train validates on, and the GLUE files they hold
SUBSETS = {"MNLI": {"valid": "dev_matched", "valid1": "dev_mismatched"}}
# the metrics printed from the checkpoint's predictions, the first being GLUE's headline one
METRICS = {"CoLA": ("mcc", "accuracy"), "MRPC": ("accuracy", "f1"), "QQP": ("accuracy", "f1"),
           "STS-B": ("pearson", "spearman")}


def subsets(task):
    return SUBSETS.get(task, {"valid": "dev"})


def selection(task):
    """(metric, larger is better) by which fairseq keeps checkpoint_best.pt (fairseq's GLUE configs)."""
    return ("loss", False) if task == "STS-B" else ("accuracy", True)


def metrics(task):
    return METRICS.get(task, ("accuracy",))


def canonical_task(name):
    for task in TASKS:
        if name.upper().replace("-", "") == task.upper().replace("-", ""):
            return task
    raise ValueError(f"unknown GLUE task {name!r}; one of {', '.join(TASKS)}")


# ------------------------------------------------------------------ the log


def best_validation(log_path, task):
    """{subset: record} of the validation fairseq kept checkpoint_best.pt for, and the other subsets' records of
    the same update, with keys unprefixed (``accuracy``, ``loss``, ``num_updates``, ``epoch``); or {} when the
    log has no validation yet."""
    metric, larger = selection(task)
    first, *others = subsets(task)
    best = None
    for record in read_records(log_path, first):
        value = record.get(f"{first}_{metric}")
        if not isinstance(value, float):
            continue
        if best is None or (value >= best[0] if larger else value <= best[0]):
            best = (value, record)
    if best is None:
        return {}
    chosen = {first: _unprefixed(best[1], first)}
    update = chosen[first].get("num_updates")
    for subset in others:
        same = [r for r in read_records(log_path, subset) if r.get(f"{subset}_num_updates") == update]
        if same:
            chosen[subset] = _unprefixed(same[-1], subset)
    return chosen


def _unprefixed(record, subset):
    prefix = subset + "_"
    return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in record.items()}


# ------------------------------------------------------------- the metrics


def _pearson(x, y):
    import numpy as np

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / denominator if denominator else float("nan")


def _ranks(values):
    """Ranks from 1, ties given their mean rank (as scipy's rankdata)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and values[order[end + 1]] == values[order[start]]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def scores(task, predictions, targets):
    """GLUE's metrics x100 of ``predictions`` against ``targets``: label strings, or floats for STS-B."""
    n = len(targets)
    if task == "STS-B":
        return {"pearson": 100 * _pearson(predictions, targets),
                "spearman": 100 * _pearson(_ranks(predictions), _ranks(targets))}
    result = {"accuracy": 100 * sum(p == t for p, t in zip(predictions, targets)) / n if n else float("nan")}
    if task in ("MRPC", "QQP", "CoLA"):
        tp = sum(p == "1" and t == "1" for p, t in zip(predictions, targets))
        fp = sum(p == "1" and t != "1" for p, t in zip(predictions, targets))
        fn = sum(p != "1" and t == "1" for p, t in zip(predictions, targets))
        tn = n - tp - fp - fn
        if task == "CoLA":
            denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            result["mcc"] = 100 * (tp * tn - fp * fn) / denominator if denominator else 0.0
        else:
            result["f1"] = 100 * 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return result


# ------------------------------------------------------------ the checkpoint


def predict(checkpoint, data, subset_names, cpu=False, batch_size=32):
    """{subset: (predictions, targets)} of the checkpoint on each dev subset: label strings (the label
    dictionary's), or floats for a regression head."""
    import torch
    from fairseq import checkpoint_utils, utils

    import rdrop_fairseq  # noqa: F401  (registers the criteria; allow-lists fairseq's checkpoint types)

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)],
                                                                      arg_overrides={"data": str(data)})
    model = models[0]
    model.eval()
    cuda = torch.cuda.is_available() and not cpu
    if cuda:
        model.cuda()
        if cfg.common.fp16:
            model.half()
    head, regression = cfg.task.classification_head_name, cfg.task.regression_target
    labels = task.label_dictionary
    results = {}
    for subset in subset_names:
        task.load_dataset(subset)
        batches = task.get_batch_iterator(
            dataset=task.dataset(subset), max_tokens=4400, max_sentences=batch_size,
            max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
            ignore_invalid_inputs=False, required_batch_size_multiple=1, num_workers=0,
        ).next_epoch_itr(shuffle=False)
        predictions, targets = [], []
        for sample in batches:
            if cuda:
                sample = utils.move_to_cuda(sample)
            with torch.no_grad():
                logits, _ = model(**sample["net_input"], features_only=True, classification_head_name=head)
            target = model.get_targets(sample, [logits]).view(-1)
            if regression:
                predictions += logits.view(-1).float().tolist()
                targets += target.float().tolist()
            else:
                predictions += [labels[i + labels.nspecial] for i in logits.argmax(dim=-1).tolist()]
                targets += [labels[i + labels.nspecial] for i in target.tolist()]
        results[subset] = (predictions, targets)
    return results


# ---------------------------------------------------------------------- CLI


def _figure(name, value):
    return f"{name} {value:.3f}" if name == "loss" else f"{name} {value:.2f}" if isinstance(value, float) else ""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rdrop_experiments.glue_eval", description=__doc__)
    parser.add_argument("task", help=", ".join(TASKS))
    parser.add_argument("--log", type=Path, required=True, help="fairseq-train's output (--log-format json)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint_best.pt, re-scored on the dev set(s)")
    parser.add_argument("--data", type=Path, help="the task's binarized data (needed with --checkpoint)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--cpu", action="store_true", help="score on the CPU even where CUDA is available")
    args = parser.parse_args(argv)
    try:
        task = canonical_task(args.task)
    except ValueError as error:
        parser.error(str(error))
    if not args.log.is_file():
        raise BadInput(f"glue_eval: error: training log not found: {args.log}")
    if args.checkpoint and not (args.checkpoint.is_file() and args.data):
        raise BadInput(f"glue_eval: error: checkpoint not found: {args.checkpoint}, or --data missing")

    names = subsets(task)
    metric, larger = selection(task)
    report = {"task": task, "log": str(args.log), "selected_by": metric, "validation": {}, "checkpoint": {}}
    chosen = best_validation(args.log, task)
    if not chosen:
        raise BadInput(f"glue_eval: error: no validation of {task} in {args.log}")
    first = next(iter(names))
    update, epoch = chosen[first].get("num_updates"), chosen[first].get("epoch")
    for subset, record in chosen.items():
        figures = ", ".join(filter(None, (_figure(k, record.get(k)) for k in ("accuracy", "loss"))))
        which = (f"best validation ({'largest' if larger else 'smallest'} {metric}; checkpoint_best.pt) at update "
                 f"{update:.0f}, epoch {epoch:.0f}" if subset == first else "at the same update")
        print(f"{task} {names[subset]} ({subset}), training log, {which}: {figures}")
        report["validation"][subset] = {k: record.get(k) for k in ("accuracy", "loss", "num_updates", "epoch")
                                        if k in record}
    if args.checkpoint:
        for subset, (predictions, targets) in predict(args.checkpoint, args.data, list(names), args.cpu).items():
            figures = scores(task, predictions, targets)
            print(f"{task} {names[subset]} ({subset}), {args.checkpoint.name} re-scored: "
                  + ", ".join(f"{name} {figures[name]:.2f}" for name in metrics(task))
                  + f" ({len(targets)} examples)")
            report["checkpoint"][subset] = {**figures, "examples": len(targets)}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main))
