"""fairseq's ``sentence_prediction`` with R-Drop, for RoBERTa-style fine-tuning
(GLUE and other sentence or sentence-pair tasks).

Training (``model.training`` and ``--rdrop-alpha`` > 0) runs one forward on the
batch concatenated with itself through the classification head, so dropout
draws independent masks for the two copies, and returns for backward

    (CE(pass 1) + CE(pass 2) + alpha * sum_sentences 1/2 (KL(P1||P2) + KL(P2||P1))) / sample_size

with CE summed over sentences and ``sample_size`` the original batch's
sentences, both as fairseq's ``sentence_prediction`` has them; the KL is taken
in float32 from the log-probabilities over the classes. With
``--regression-target`` the terms are fairseq's summed squared errors and the
squared difference of the two predictions:

    (MSE(pass 1) + MSE(pass 2) + alpha * sum (pred1 - pred2)^2) / sample_size

where ``sample_size`` counts the target values (sentences x --num-classes), as
fairseq's does. (The official R-Drop RoBERTa code takes the squared error of
pass 1 only and compares shapes (B,) and (B, 1), which broadcast to B x B.)
``--mha-reg-scale-factor`` and ``--ffn-reg-scale-factor`` penalties, which
depend on the parameters alone, are part of each pass's fairseq loss, so they
count twice, in the same ratio to the task loss as without R-Drop.
Validation and ``--rdrop-alpha 0`` are exactly fairseq's ``sentence_prediction``:
one pass. An empty batch needs no special case: the same computation gives
a zero loss and the usual logging keys.
``--rdrop-alpha-warmup-updates``: ``rdrop_common.rdrop_alpha_warmup_field``.

Logged: ``loss`` (hence fairseq's derived ``nll_loss``) and ``accuracy`` are the
average of the two passes, so they compare with validation and with a baseline;
``kl_loss`` is the symmetric KL (the squared difference for regression) per
``sample_size`` unit, in base 2 like ``loss``. The objective per sentence, in
bits, is therefore ``2 * loss + alpha * kl_loss``.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.sentence_prediction import SentencePredictionConfig, SentencePredictionCriterion

from rdrop_fairseq.criterions.rdrop_common import (
    RDropCriterionMixin,
    rdrop_alpha_field,
    rdrop_alpha_warmup_field,
)
from rdrop_fairseq.loss import symmetric_kl_of_halves


def parameter_penalties(model):
    """The ``mha_reg_loss`` and ``ffn_reg_loss`` that fairseq's ``sentence_prediction``
    adds when the model's ``--mha-reg-scale-factor`` / ``--ffn-reg-scale-factor`` is set."""
    args = getattr(model, "args", None)
    penalties = {}
    if getattr(args, "mha_reg_scale_factor", 0.0) != 0.0:
        penalties["mha_reg_loss"] = model._get_adaptive_head_loss()
    if getattr(args, "ffn_reg_scale_factor", 0.0) != 0.0:
        penalties["ffn_reg_loss"] = model._get_adaptive_ffn_loss()
    return penalties


@dataclass
class SentencePredictionRDropConfig(SentencePredictionConfig):
    rdrop_alpha: float = rdrop_alpha_field(
        1.0,
        "the two dropout passes' class distributions (squared difference of the predictions "
        "with --regression-target; official RoBERTa GLUE code: 1.0)",
        "sentence_prediction",
    )
    rdrop_alpha_warmup_updates: int = rdrop_alpha_warmup_field()


@register_criterion("sentence_prediction_rdrop", dataclass=SentencePredictionRDropConfig)
class SentencePredictionRDrop(RDropCriterionMixin, SentencePredictionCriterion):
    criterion_name = "sentence_prediction_rdrop"

    def __init__(self, cfg: SentencePredictionRDropConfig, task):
        super().__init__(cfg, task)
        self.configure_rdrop(cfg.rdrop_alpha, cfg.rdrop_alpha_warmup_updates)

    def forward(self, model, sample, reduce=True):
        # fairseq's sentence_prediction sums over sentences whatever ``reduce`` says; so does this.
        self.require_target(sample)
        if not self.rdrop_active(model):
            return super().forward(model, sample, reduce=reduce)
        if self.classification_head_name not in getattr(model, "classification_heads", {}):
            raise ValueError(
                f"{self.criterion_name} needs a model with the classification head "
                f"'{self.classification_head_name}' (--classification-head-name), as --task "
                "sentence_prediction registers"
            )
        head_input = {
            **sample,
            "net_input": {
                **sample["net_input"],
                "features_only": True,
                "classification_head_name": self.classification_head_name,
            },
        }
        (logits, _), target = self.forward_both_passes(model, head_input)
        targets = target.view(-1)
        sample_size = targets.numel()

        if not self.regression_target:
            lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
            both_targets = torch.cat([targets, targets])
            task_loss = F.nll_loss(lprobs, both_targets, reduction="sum")
            kl_loss = symmetric_kl_of_halves(lprobs).sum()
        else:
            # pass 1's values in row 0, pass 2's in row 1, each (sentences x outputs,)
            preds = logits.float().reshape(2, -1)
            task_loss = F.mse_loss(preds, targets.float().expand(2, -1), reduction="sum")
            kl_loss = (preds[0] - preds[1]).pow(2).sum()
        penalties = parameter_penalties(model)
        loss = task_loss + 2 * sum(penalties.values())
        alpha = self.alpha_now()
        objective = loss + alpha * kl_loss

        logging_output = {key: value.data for key, value in penalties.items()}
        logging_output.update(
            {
                "loss": loss.data / 2,
                "kl_loss": kl_loss.data,
                "ntokens": sample["ntokens"],
                "nsentences": sample_size,
                "sample_size": sample_size,
            }
        )
        self.log_alpha(logging_output, alpha)
        if not self.regression_target:
            # summed over both passes and halved: fairseq's accuracy, ncorrect / nsentences,
            # is then the mean of the two passes' with nsentences the batch's own
            logging_output["ncorrect"] = (logits.argmax(dim=1) == both_targets).sum() / 2
        return objective, sample_size, logging_output

    def require_target(self, sample) -> None:
        if sample.get("target") is None:
            raise ValueError(
                f"{self.criterion_name} needs batches with a 'target': --task sentence_prediction "
                "gives one for a split that has labels (label/<split>)"
            )

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        # kl_loss per sentence (per target value in regression), as loss here, not per token
        cls.reduce_rdrop_metrics([{**log, "ntokens": log.get("sample_size", 0)} for log in logging_outputs])
