"""Label-smoothed cross-entropy with R-Drop, as a fairseq criterion.

Training (``model.training`` and ``--rdrop-alpha`` > 0) runs one forward on
the batch concatenated with itself, so dropout draws independent masks for the
two copies, and returns for backward the sum-form objective

    (LS-CE(pass 1) + LS-CE(pass 2) + alpha * sum_tokens 1/2 (KL(P1||P2) + KL(P2||P1))) / sample_size

with ``sample_size`` the original batch's ``ntokens`` (or ``nsentences`` under
``--sentence-avg``), the normalisation of the official R-Drop code. Validation,
generation and ``--rdrop-alpha 0`` are exactly fairseq's
``label_smoothed_cross_entropy``: one pass, nothing doubled.
With ``--rdrop-alpha-warmup-updates N``, alpha rises linearly from 0 over the
first N updates of the trainer's count (``rdrop_common.trainer_num_updates``).

Logged (base 2, per token): ``loss`` and ``nll_loss`` are the average of the
two passes, so they compare with validation and with a baseline; ``kl_loss``
is the symmetric KL. The objective per token, in bits, is therefore
``2 * loss + alpha * kl_loss``.
"""

from dataclasses import dataclass, field

from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)

from rdrop_fairseq.criterions.rdrop_common import RDropCriterionMixin, rdrop_alpha_warmup_field
from rdrop_fairseq.loss import label_smoothed_nll_and_symmetric_kl


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
    rdrop_alpha_warmup_updates: int = rdrop_alpha_warmup_field()


@register_criterion(
    "label_smoothed_cross_entropy_rdrop",
    dataclass=LabelSmoothedCrossEntropyRDropCriterionConfig,
)
class LabelSmoothedCrossEntropyRDropCriterion(RDropCriterionMixin, LabelSmoothedCrossEntropyCriterion):
    criterion_name = "label_smoothed_cross_entropy_rdrop"

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

    def forward(self, model, sample, reduce=True):
        self.require_target(sample)
        if sample["target"].numel() == 0:
            return self.empty_batch_output(model)
        self.check_ignore_prefix_size(sample["target"])
        if not self.rdrop_active(model):
            return super().forward(model, sample, reduce=reduce)

        net_output, target = self.forward_both_passes(model, sample)
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        if self.ignore_prefix_size > 0:
            lprobs = lprobs[:, self.ignore_prefix_size :]
            target = target[:, self.ignore_prefix_size :]
        terms = label_smoothed_nll_and_symmetric_kl(lprobs, target, self.eps, self.padding_idx)
        if reduce:
            loss, nll_loss, kl_loss = terms.loss.sum(), terms.nll_loss.sum(), terms.kl.sum()
        else:
            # per token of the original batch, the two passes added
            loss, nll_loss, kl_loss = terms.loss.sum(0).view(-1), terms.nll_loss.sum(0).view(-1), terms.kl.view(-1)
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
            both_targets = target.repeat(2, *([1] * (target.dim() - 1)))
            keep = both_targets.ne(self.padding_idx)
            n_correct = lprobs.argmax(-1).eq(both_targets).logical_and(keep).sum()
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(keep.sum().data)
        return objective, sample_size, logging_output

    def empty_batch_output(self, model):
        """Zero loss and the same logging keys as a real batch, so that worker
        outputs stay summable."""
        logging_output = dict.fromkeys(("loss", "nll_loss", "ntokens", "nsentences", "sample_size"), 0)
        if self.rdrop_active(model):
            logging_output["kl_loss"] = 0
            self.log_alpha(logging_output, 0.0)
        if self.report_accuracy:
            logging_output.update(n_correct=0, total=0)
        return self.zero_loss(model), 0, logging_output

    def check_ignore_prefix_size(self, target) -> None:
        if self.ignore_prefix_size >= target.size(1):
            raise ValueError(
                f"--ignore-prefix-size {self.ignore_prefix_size} drops every target token of this "
                f"batch, whose targets are at most {target.size(1)} tokens long (end of sentence "
                "included), so there is nothing to learn from; it must be smaller than the "
                "target length: the number of leading tokens to skip, e.g. 1 for a language tag"
            )

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        cls.reduce_rdrop_metrics(logging_outputs)
