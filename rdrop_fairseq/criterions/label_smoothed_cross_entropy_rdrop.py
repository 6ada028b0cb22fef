"""Label-smoothed cross-entropy with R-Drop, as a fairseq criterion.

Training (``model.training`` and ``--rdrop-alpha`` > 0) runs one forward on
the batch concatenated with itself, so dropout draws independent masks for the
two copies, and returns for backward the sum-form objective

    (LS-CE(pass 1) + LS-CE(pass 2) + alpha * sum_tokens 1/2 (KL(P1||P2) + KL(P2||P1))) / sample_size

with ``sample_size`` the original batch's ``ntokens`` (or ``nsentences`` under
``--sentence-avg``), the normalisation of the official R-Drop code. Validation,
generation and ``--rdrop-alpha 0`` are exactly fairseq's
``label_smoothed_cross_entropy``: one pass, nothing doubled.

Logged (base 2, per token): ``loss`` and ``nll_loss`` are the average of the
two passes, so they compare with validation and with a baseline; ``kl_loss``
is the symmetric KL. The objective per token, in bits, is therefore
``2 * loss + alpha * kl_loss``.
"""

import logging
import math
from dataclasses import dataclass, field

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)
from fairseq.logging import metrics
from fairseq.modules import FairseqDropout

from rdrop_fairseq.loss import symmetric_kl

logger = logging.getLogger(__name__)


@dataclass
class LabelSmoothedCrossEntropyRDropCriterionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    rdrop_alpha: float = field(
        default=5.0,
        metadata={
            "help": "weight of the R-Drop term, the symmetric KL between two dropout "
            "passes (paper: 5 for IWSLT/WMT, 0.7 for CNN/DM, 1.0 for LM); "
            "0 trains plain label-smoothed cross-entropy with one pass"
        },
    )


def check_rdrop_alpha(alpha: float) -> None:
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(
            f"--rdrop-alpha must be a finite number >= 0, got {alpha}; "
            "use e.g. --rdrop-alpha 5 for R-Drop or --rdrop-alpha 0 for the baseline"
        )


def has_active_dropout(model: torch.nn.Module) -> bool:
    return any(
        isinstance(module, (torch.nn.modules.dropout._DropoutNd, FairseqDropout)) and module.p > 0
        for module in model.modules()
    )


def concat_batch_with_itself(net_input, batch_size: int):
    """A new ``net_input`` in which every batch-first tensor is [x; x]."""
    return utils.apply_to_sample(
        lambda t: torch.cat([t, t]) if t.dim() > 0 and t.size(0) == batch_size else t,
        net_input,
    )


@register_criterion(
    "label_smoothed_cross_entropy_rdrop",
    dataclass=LabelSmoothedCrossEntropyRDropCriterionConfig,
)
class LabelSmoothedCrossEntropyRDropCriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        rdrop_alpha=5.0,
    ):
        super().__init__(
            task,
            sentence_avg,
            label_smoothing,
            ignore_prefix_size=ignore_prefix_size,
            report_accuracy=report_accuracy,
        )
        check_rdrop_alpha(rdrop_alpha)
        self.rdrop_alpha = rdrop_alpha
        self.dropout_checked = False

    def forward(self, model, sample, reduce=True):
        rdrop = model.training and self.rdrop_alpha > 0
        if sample.get("target") is None:
            raise ValueError(
                "label_smoothed_cross_entropy_rdrop needs batches with a 'target' (as "
                "--task translation and language_modeling give); this batch has none"
            )
        if sample["target"].numel() == 0:
            return self.empty_batch_output(model, rdrop)
        if not rdrop:
            return super().forward(model, sample, reduce=reduce)
        if not self.dropout_checked:
            self.dropout_checked = True
            if not has_active_dropout(model):
                logger.warning(
                    "--rdrop-alpha %s has no effect: the model has no dropout, so both "
                    "passes are identical and the KL term is identically zero; "
                    "set --dropout (and --attention-dropout/--activation-dropout) > 0",
                    self.rdrop_alpha,
                )

        target = model.get_targets(sample, None)
        batch_size = target.size(0)
        net_output = model(**concat_batch_with_itself(sample["net_input"], batch_size))
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        if lprobs.size(0) != 2 * batch_size:
            raise RuntimeError(
                f"R-Drop expected the model to return 2 x {batch_size} rows for the "
                f"concatenated batch, got {lprobs.size(0)}; the model's output must be "
                "batch-first (fairseq encoder-decoder and language models are)"
            )
        if self.ignore_prefix_size > 0:
            lprobs = lprobs[:, self.ignore_prefix_size :]
            target = target[:, self.ignore_prefix_size :]
        both_targets = target.repeat(2, *([1] * (target.dim() - 1)))

        loss, nll_loss = label_smoothed_nll_loss(
            lprobs, both_targets, self.eps, ignore_index=self.padding_idx, reduce=reduce
        )
        lprobs1, lprobs2 = lprobs.chunk(2)
        kl_loss = symmetric_kl(lprobs1, lprobs2, keep=target.ne(self.padding_idx))
        if reduce:
            kl_loss = kl_loss.sum()
        else:
            loss, nll_loss = loss.view(2, -1).sum(0), nll_loss.view(2, -1).sum(0)
            kl_loss = kl_loss.view(-1)
        objective = loss + self.rdrop_alpha * kl_loss

        sample_size = batch_size if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data / 2,
            "nll_loss": nll_loss.data / 2,
            "kl_loss": kl_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": batch_size,
            "sample_size": sample_size,
        }
        if self.report_accuracy:
            keep = both_targets.ne(self.padding_idx)
            n_correct = lprobs.argmax(-1).eq(both_targets).logical_and(keep).sum()
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(keep.sum().data)
        return objective, sample_size, logging_output

    def empty_batch_output(self, model, rdrop):
        """A zero loss that reaches every parameter (as a DDP dummy batch does) and
        the same logging keys as a real batch, so worker outputs stay summable."""
        zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
        logging_output = dict.fromkeys(("loss", "nll_loss", "ntokens", "nsentences", "sample_size"), 0)
        if rdrop:
            logging_output["kl_loss"] = 0
        if self.report_accuracy:
            logging_output.update(n_correct=0, total=0)
        return zero, 0, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        if any("kl_loss" in log for log in logging_outputs):
            kl_sum = sum(log.get("kl_loss", 0) for log in logging_outputs)
            ntokens = sum(log.get("ntokens", 0) for log in logging_outputs)
            metrics.log_scalar("kl_loss", kl_sum / max(ntokens, 1) / math.log(2), ntokens, round=3)
