"""What the R-Drop criteria share: configuration checks, the doubled forward
pass, batches with nothing to learn, and the ``kl_loss`` metric."""

import logging
import math

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


class RDropCriterionMixin:
    """For criteria with ``rdrop_alpha``; ``criterion_name`` names them in errors."""

    criterion_name = "R-Drop criterion"
    dropout_checked = False

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
    def zero_loss(model):
        """A zero that reaches every parameter, as a DDP dummy batch does."""
        return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0

    @staticmethod
    def reduce_kl_metric(logging_outputs) -> None:
        if any("kl_loss" in log for log in logging_outputs):
            kl_sum = sum(log.get("kl_loss", 0) for log in logging_outputs)
            ntokens = sum(log.get("ntokens", 0) for log in logging_outputs)
            metrics.log_scalar("kl_loss", kl_sum / max(ntokens, 1) / math.log(2), ntokens, round=3)
