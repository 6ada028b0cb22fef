"""Label-smoothed cross-entropy with R-Drop, as a fairseq criterion.

Training (``model.training`` and ``--rdrop-alpha`` > 0) runs one forward on
the batch concatenated with itself, so dropout draws independent masks for the
two copies, and returns for backward the sum-form objective

    (LS-CE(pass 1) + LS-CE(pass 2) + alpha * sum_tokens 1/2 (KL(P1||P2) + KL(P2||P1))) / sample_size

with ``sample_size`` the original batch's ``ntokens`` (or ``nsentences`` under
``--sentence-avg``), the normalisation of the official R-Drop code. Validation,
generation and ``--rdrop-alpha 0`` are exactly fairseq's
``label_smoothed_cross_entropy``: one pass, nothing doubled.
``--ignore-prefix-size`` at or beyond the task's longest target stops start-up;
a training batch whose targets are all within the prefix counts as empty
(zero loss, one warning; the model still runs, so that DDP stays in step),
while validation adds 0 for it as fairseq does.
``--rdrop-alpha-warmup-updates``: ``rdrop_common.rdrop_alpha_warmup_field``.

Logged (base 2, per token): ``loss`` and ``nll_loss`` are the average of the
two passes, so they compare with validation and with a baseline; ``kl_loss``
is the symmetric KL. The objective per token, in bits, is therefore
``2 * loss + alpha * kl_loss``.
"""

import logging
from dataclasses import dataclass

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)

from rdrop_fairseq.criterions.rdrop_common import (
    RDropCriterionMixin,
    rdrop_alpha_field,
    rdrop_alpha_warmup_field,
)
from rdrop_fairseq.loss import label_smoothed_nll_and_symmetric_kl

logger = logging.getLogger(__name__)


def longest_target(task):
    """The task's bound on target length, if it declares one, and the flags that
    set it: the second entry of a (source, target) ``max_positions()``, as
    translation tasks give, or a language-modelling task's ``--tokens-per-sample``
    (one more with ``--add-bos-token``), capped by its ``--max-target-positions``."""
    positions = task.max_positions()
    if isinstance(positions, tuple) and len(positions) == 2 and isinstance(positions[1], int):
        return positions[1], "--max-target-positions"
    config = getattr(task, "args", None) or getattr(task, "cfg", None)
    tokens_per_sample = getattr(config, "tokens_per_sample", None)
    if not isinstance(tokens_per_sample, int):
        return None
    longest, flags = tokens_per_sample, "--tokens-per-sample"
    if getattr(config, "add_bos_token", False):
        longest, flags = longest + 1, "--tokens-per-sample plus 1 for --add-bos-token"
    max_target_positions = getattr(config, "max_target_positions", None)
    if isinstance(max_target_positions, int) and max_target_positions < longest:
        longest, flags = max_target_positions, "--max-target-positions"
    return longest, flags


def check_ignore_prefix_size(prefix: int, task) -> None:
    """Rejects a prefix that no batch can satisfy, before training starts."""
    if prefix < 0:
        raise ValueError(
            f"--ignore-prefix-size must be >= 0, got {prefix}: the number of leading target tokens "
            "to leave out of the loss, e.g. 1 for a language tag"
        )
    bound = longest_target(task)
    if bound is not None and prefix >= bound[0]:
        longest, flags = bound
        raise ValueError(
            f"--ignore-prefix-size {prefix} leaves out every target token: this task's targets are at most "
            f"{longest} tokens long ({flags}, end of sentence included); it must be smaller: "
            "the number of leading target tokens to skip, e.g. 1 for a language tag"
        )


@dataclass
class LabelSmoothedCrossEntropyRDropCriterionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    rdrop_alpha: float = rdrop_alpha_field(
        5.0,
        "two dropout passes (paper: 5 for IWSLT/WMT, 0.7 for CNN/DM, 1.0 for LM)",
        "label-smoothed cross-entropy",
    )
    rdrop_alpha_warmup_updates: int = rdrop_alpha_warmup_field()


@register_criterion(
    "label_smoothed_cross_entropy_rdrop",
    dataclass=LabelSmoothedCrossEntropyRDropCriterionConfig,
)
class LabelSmoothedCrossEntropyRDropCriterion(RDropCriterionMixin, LabelSmoothedCrossEntropyCriterion):
    criterion_name = "label_smoothed_cross_entropy_rdrop"
    warned_nothing_after_prefix = False

    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        rdrop_alpha=5.0,
        rdrop_alpha_warmup_updates=0,
    ):
        super().__init__(
            task,
            sentence_avg,
            label_smoothing,
            ignore_prefix_size=ignore_prefix_size,
            report_accuracy=report_accuracy,
        )
        self.configure_rdrop(rdrop_alpha, rdrop_alpha_warmup_updates)
        check_ignore_prefix_size(ignore_prefix_size, task)

    def forward(self, model, sample, reduce=True):
        self.require_target(sample)
        if sample["target"].numel() == 0:
            return self.empty_batch_output(model)
        if not self.rdrop_active(model):
            return super().forward(model, sample, reduce=reduce)
        net_output, target = self.forward_both_passes(model, sample)
        if target.size(1) <= self.ignore_prefix_size or sample["ntokens"] == 0:
            # The model still runs, as on a DDP dummy batch: under PyTorch's
            # DistributedDataParallel every rank must call it and reduce gradients.
            if target.size(1) <= self.ignore_prefix_size:
                self.warn_nothing_after_prefix(target.size(1))
            return self.empty_batch_output(model, net_output)
        # fairseq's own prefix slicing and flattening: 2B x T' rows, pass 1 first,
        # and the B x T' targets of the original batch
        lprobs, flat_target = self.get_lprobs_and_target(model, net_output, sample)
        terms = label_smoothed_nll_and_symmetric_kl(lprobs, flat_target, self.eps, self.padding_idx)
        if reduce:
            loss, nll_loss, kl_loss = terms.smoothed_nll.sum(), terms.nll.sum(), terms.kl.sum()
        else:
            # per token of the original batch, the two passes added, in fairseq's (tokens, 1) shape
            loss, nll_loss, kl_loss = (x.unsqueeze(-1) for x in (terms.smoothed_nll.sum(0), terms.nll.sum(0), terms.kl))
        alpha = self.alpha_now()
        objective = loss + alpha * kl_loss

        batch_size = target.size(0)
        sample_size = batch_size if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data / 2,
            "nll_loss": nll_loss.data / 2,
            "kl_loss": kl_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": batch_size,
            "sample_size": sample_size,
        }
        self.log_alpha(logging_output, alpha)
        if self.report_accuracy:
            both_passes = {**sample, "target": torch.cat([target, target])}
            n_correct, total = self.compute_accuracy(model, net_output, both_passes)
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)
        return objective, sample_size, logging_output

    def empty_batch_output(self, model, net_output=None):
        """Zero loss and the same logging keys as a real batch, so that worker
        outputs stay summable; the zero reaches the parameters behind
        ``net_output`` where the model was run."""
        logging_output = dict.fromkeys(("loss", "nll_loss", "ntokens", "nsentences", "sample_size"), 0)
        if self.rdrop_active(model):
            logging_output["kl_loss"] = 0
            self.log_alpha(logging_output, 0.0)
        if self.report_accuracy:
            logging_output.update(n_correct=0, total=0)
        return self.zero_loss(model, net_output), 0, logging_output

    def warn_nothing_after_prefix(self, target_length: int) -> None:
        if not self.warned_nothing_after_prefix:
            self.warned_nothing_after_prefix = True
            logger.warning(
                "--ignore-prefix-size %d leaves no target token in a training batch whose targets are at most "
                "%d tokens long (end of sentence included), e.g. end-of-sentence tokens only; such "
                "batches count as empty (zero loss, no gradient), as validation adds 0 for them. Lower "
                "--ignore-prefix-size if many batches are this short (warned once)",
                self.ignore_prefix_size,
                target_length,
            )

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        cls.reduce_rdrop_metrics(logging_outputs)
