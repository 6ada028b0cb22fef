"""What the R-Drop criteria share: configuration checks, the alpha warm-up, the
doubled forward pass, batches with nothing to learn, and the logged metrics."""

import logging
import math
from dataclasses import field
from typing import List, Optional

import torch
from fairseq import utils
from fairseq.logging import metrics
from fairseq.modules import FairseqDropout

logger = logging.getLogger(__name__)


def check_rdrop_alpha(alpha: float) -> None:
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(
            f"--rdrop-alpha must be a finite number >= 0, got {alpha}; "
            "use e.g. --rdrop-alpha 5 for R-Drop or --rdrop-alpha 0 for the baseline"
        )


def check_rdrop_alpha_warmup_updates(updates: int) -> None:
    if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
        raise ValueError(
            f"--rdrop-alpha-warmup-updates must be a whole number of updates >= 0, got {updates!r}; "
            "use 0 (the default) for a constant alpha"
        )


def rdrop_alpha_field(default: float, compared: str, alpha_zero: str):
    """The ``--rdrop-alpha`` option: ``compared`` says what the KL compares, and
    ``alpha_zero`` what the criterion trains with alpha 0."""
    return field(
        default=default,
        metadata={
            "help": f"weight of the R-Drop term, the symmetric KL between {compared}; "
            f"0 trains plain {alpha_zero} with one pass"
        },
    )


def rdrop_alpha_warmup_field():
    """``--rdrop-alpha-warmup-updates``: alpha rises linearly from 0 over the first
    N updates of the trainer's count (:func:`trainer_num_updates`), or of the
    count given to ``set_num_updates`` in another training loop."""
    return field(
        default=0,
        metadata={
            "help": "raise alpha linearly from 0 to --rdrop-alpha over this many updates "
            "(0: constant alpha); follows the trainer's update count, so it continues "
            "where it stopped when training resumes from a checkpoint"
        },
    )


def warmed_up_alpha(alpha: float, warmup_updates: int, num_updates: int) -> float:
    """``alpha * min(1, num_updates / warmup_updates)``; ``alpha`` when warm-up is off.

    ``num_updates`` counts the updates completed before this one, as fairseq's
    learning-rate warm-up does: the first update uses 0, update ``warmup_updates + 1``
    the full alpha.
    """
    if warmup_updates == 0:
        return alpha
    return alpha * min(1.0, num_updates / warmup_updates)


def trainer_num_updates() -> Optional[int]:
    """The updates fairseq's Trainer has completed (its ``update_num``), None
    outside its training loop and before its first update.

    ``Trainer.set_num_updates`` logs the count to every active metrics
    aggregator, also after loading a checkpoint; the named aggregators are not
    read, because a loaded checkpoint replaces them with frozen copies."""
    for aggregator in metrics.get_active_aggregators():
        meter = aggregator.get("num_updates")
        if meter is not None and meter.val is not None:
            return int(meter.val)
    return None


def in_fairseq_training_loop() -> bool:
    """Whether fairseq-train's loop is running, which wraps every update in the
    ``train_inner`` metrics aggregator."""
    inner = metrics.get_meters("train_inner")
    return inner is not None and any(aggregator is inner for aggregator in metrics.get_active_aggregators())


def has_active_dropout(model: torch.nn.Module) -> bool:
    return any(
        isinstance(module, (torch.nn.modules.dropout._DropoutNd, FairseqDropout)) and module.p > 0
        for module in model.modules()
    )


def leaves_behind(tensor: torch.Tensor) -> List[torch.Tensor]:
    """The tensors that require grad and that ``tensor`` was computed from
    (the model's parameters that a loss on it would reach)."""
    leaves, seen, stack = [], set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):  # AccumulateGrad: a leaf's gradient sink
            leaves.append(node.variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def concat_batch_with_itself(net_input, batch_size: int):
    """A new ``net_input`` in which every batch-first tensor is [x; x]."""
    return utils.apply_to_sample(
        lambda t: torch.cat([t, t]) if t.dim() > 0 and t.size(0) == batch_size else t,
        net_input,
    )


class RDropCriterionMixin:
    """For criteria with ``rdrop_alpha``; ``criterion_name`` names them in errors."""

    criterion_name = "R-Drop criterion"
    dropout_checked = False
    given_num_updates: Optional[int] = None
    warned_no_update_count = False

    def configure_rdrop(self, rdrop_alpha: float, rdrop_alpha_warmup_updates: int) -> None:
        check_rdrop_alpha(rdrop_alpha)
        check_rdrop_alpha_warmup_updates(rdrop_alpha_warmup_updates)
        self.rdrop_alpha = rdrop_alpha
        self.rdrop_alpha_warmup_updates = rdrop_alpha_warmup_updates

    def set_num_updates(self, num_updates: int) -> None:
        """Tells the alpha warm-up how many updates are done before the next one.

        For training loops other than fairseq's Trainer, whose count the
        criterion reads by itself; once called, this count is used instead.
        """
        self.given_num_updates = num_updates

    def alpha_now(self) -> float:
        """The alpha of the current update: --rdrop-alpha after the warm-up."""
        return warmed_up_alpha(self.rdrop_alpha, self.rdrop_alpha_warmup_updates, self.num_updates_done())

    def num_updates_done(self) -> int:
        """The count given to ``set_num_updates``, else fairseq's Trainer's, else 0."""
        if self.given_num_updates is not None:
            return self.given_num_updates
        count = trainer_num_updates()
        if count is not None:
            return count
        # Before fairseq-train's first update nothing is logged yet and 0 is right;
        # elsewhere nothing ever will be, and alpha would stay 0 for good.
        warmup = self.rdrop_alpha_warmup_updates
        if warmup and not self.warned_no_update_count and not in_fairseq_training_loop():
            self.warned_no_update_count = True
            logger.warning(
                "--rdrop-alpha-warmup-updates %d has no update count to follow (fairseq's Trainer logs "
                "it; this training loop does not), so alpha stays 0 and the KL term has no effect; "
                "call criterion.set_num_updates(updates_done) before each update",
                warmup,
            )
        return 0

    def log_alpha(self, logging_output, alpha: float) -> None:
        """With warm-up, adds the alpha used, in a form that sums over micro-batches
        and workers like every other logging output: alpha times the sentences."""
        if self.rdrop_alpha_warmup_updates > 0:
            logging_output["rdrop_alpha_x_nsentences"] = alpha * logging_output["nsentences"]

    def rdrop_active(self, model) -> bool:
        return model.training and self.rdrop_alpha > 0

    def require_target(self, sample) -> None:
        if sample.get("target") is None:
            raise ValueError(
                f"{self.criterion_name} needs batches with a 'target' (as --task "
                "translation and language_modeling give); this batch has none"
            )

    def forward_both_passes(self, model, sample):
        """One forward on the batch concatenated with itself: (net_output, target)."""
        if not self.dropout_checked:
            self.dropout_checked = True
            if not has_active_dropout(model):
                logger.warning(
                    "--rdrop-alpha %s has no effect: the model has no dropout, so both "
                    "passes are identical and the KL term is identically zero; set "
                    "--dropout (and --attention-dropout/--activation-dropout) > 0",
                    self.rdrop_alpha,
                )
        target = model.get_targets(sample, None)
        batch_size = target.size(0)
        net_output = model(**concat_batch_with_itself(sample["net_input"], batch_size))
        rows = net_output[0].size(0)
        if rows != 2 * batch_size:
            raise RuntimeError(
                f"R-Drop expected the model to return 2 x {batch_size} rows for the "
                f"concatenated batch, got {rows}; the model's output must be "
                "batch-first (fairseq encoder-decoder and language models are)"
            )
        return net_output, target

    @staticmethod
    def zero_loss(model, net_output=None):
        """A zero whose gradient, exactly 0, reaches the parameters a real batch's
        loss reaches: those behind the model's output where it was run (PyTorch
        DDP expects the same ones on every rank), else all of them. It is the sum
        of none of their entries, not taken through the output, which can hold
        NaN (all-masked attention rows, on older torch) and 0 times NaN is NaN."""
        if net_output is None:
            parameters = [p for p in model.parameters() if p.requires_grad]
        else:
            parameters = leaves_behind(net_output[0])
        return sum((p.flatten()[:0].sum() for p in parameters), torch.zeros(()))

    @staticmethod
    def reduce_rdrop_metrics(logging_outputs) -> None:
        """``kl_loss`` per token in bits and, with warm-up, ``rdrop_alpha``."""
        if any("kl_loss" in log for log in logging_outputs):
            kl_sum = sum(log.get("kl_loss", 0) for log in logging_outputs)
            ntokens = sum(log.get("ntokens", 0) for log in logging_outputs)
            metrics.log_scalar("kl_loss", kl_sum / max(ntokens, 1) / math.log(2), ntokens, round=3)
        if any("rdrop_alpha_x_nsentences" in log for log in logging_outputs):
            alpha_sum = sum(log.get("rdrop_alpha_x_nsentences", 0) for log in logging_outputs)
            nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
            if nsentences > 0:
                # Weight 0, as the trainer logs lr: the meter shows the latest
                # update's alpha rather than an average over the log interval.
                metrics.log_scalar("rdrop_alpha", alpha_sum / nsentences, weight=0, round=4)
