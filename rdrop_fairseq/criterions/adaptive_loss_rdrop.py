"""fairseq's ``adaptive_loss`` with R-Drop, for models with an adaptive softmax.

An adaptive softmax (``--adaptive-softmax-cutoff``, e.g. ``transformer_lm_wiki103``)
factorises the next-token distribution. The head distribution ``h`` covers the
shortlist words and one entry per tail cluster ``c``; cluster ``c`` has its own
distribution ``t_c`` over its words:

    p(w) = h(w)             for a shortlist word w
    p(w) = h(c) * t_c(w)    for a word w of tail cluster c

The KL divergence between two such distributions P and Q splits the same way,
exactly:

    KL(P||Q) = KL(h_P||h_Q) + sum_c h_P(c) * KL(t_P,c||t_Q,c)

so the symmetric KL that R-Drop adds for each target token, between the
distributions P1 and P2 of the two passes, is

    1/2 (KL(P1||P2) + KL(P2||P1))
        = 1/2 (KL(h1||h2) + KL(h2||h1))
        + 1/2 sum_c (h1(c) * KL(t1,c||t2,c) + h2(c) * KL(t2,c||t1,c))

with every tail term weighted by its own direction's head probability of the
cluster. That is the KL between the full next-token distributions over the
whole vocabulary, computed here from the head's and each cluster's
log-probabilities in float32 without ever forming a tokens x vocabulary tensor.

Training (``model.training`` and ``--rdrop-alpha`` > 0) runs one forward on the
batch concatenated with itself and returns for backward

    (CE(pass 1) + CE(pass 2) + alpha * sum_tokens 1/2 (KL(P1||P2) + KL(P2||P1))) / sample_size

where CE is the sum that fairseq's ``adaptive_loss`` computes and
``sample_size`` the original batch's non-padding target tokens (its sentences
under ``--sentence-avg``). Every tail cluster is evaluated for every token,
since the KL needs the whole distribution, whereas fairseq's ``adaptive_loss``
evaluates a cluster only for the tokens whose target lies in it; the clusters'
log-probabilities are kept for backward, so the R-Drop term needs about as much
memory as one float32 tokens x vocabulary tensor. Validation and
``--rdrop-alpha 0`` are exactly fairseq's ``adaptive_loss``: one pass.
``--rdrop-alpha-warmup-updates``: ``rdrop_common.rdrop_alpha_warmup_field``.

Logged (base 2, per token): ``loss`` and ``nll_loss`` are the average of the two
passes' CE, comparable with validation; ``kl_loss`` is the symmetric KL.
"""

from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.adaptive_loss import AdaptiveLoss, AdaptiveLossConfig

from rdrop_fairseq.criterions.rdrop_common import (
    RDropCriterionMixin,
    rdrop_alpha_field,
    rdrop_alpha_warmup_field,
)
from rdrop_fairseq.loss import adaptive_symmetric_kl


def adaptive_log_probs(adaptive_softmax, features: torch.Tensor):
    """Head and per-cluster log-probabilities for every row of ``features``.

    The same computation as ``AdaptiveSoftmax.forward`` in training (its input
    dropout, then ``head`` and each ``tail[c]``, whose dropout is inside it),
    except that every cluster is evaluated for every row, not only for the rows
    whose target lies in it. Log-softmax in float32 at least.
    """
    hidden = adaptive_softmax.dropout_module(features.reshape(-1, features.size(-1)))
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    head = F.log_softmax(adaptive_softmax.head(hidden).to(dtype), dim=-1)
    tails = [F.log_softmax(tail(hidden).to(dtype), dim=-1) for tail in adaptive_softmax.tail]
    return head, tails


@dataclass
class AdaptiveLossRDropConfig(AdaptiveLossConfig):
    rdrop_alpha: float = rdrop_alpha_field(
        1.0,
        "the two dropout passes' full next-token distributions (paper: 1.0 for LM)",
        "adaptive_loss",
    )
    rdrop_alpha_warmup_updates: int = rdrop_alpha_warmup_field()


@register_criterion("adaptive_loss_rdrop", dataclass=AdaptiveLossRDropConfig)
class AdaptiveLossRDrop(RDropCriterionMixin, AdaptiveLoss):
    criterion_name = "adaptive_loss_rdrop"

    def __init__(self, task, sentence_avg, rdrop_alpha=1.0, rdrop_alpha_warmup_updates=0):
        super().__init__(task, sentence_avg)
        self.configure_rdrop(rdrop_alpha, rdrop_alpha_warmup_updates)

    @classmethod
    def build_criterion(cls, cfg: AdaptiveLossRDropConfig, task):
        # fairseq's check: with --rdrop-alpha 0 a tail cluster that no target in the
        # batch falls in gets no gradient, which PyTorch DDP rejects.
        if cfg.ddp_backend in {"c10d", "pytorch_ddp"}:
            raise ValueError(
                "adaptive_loss_rdrop, like adaptive_loss, is not compatible with the "
                "PyTorch version of DistributedDataParallel; use --ddp-backend legacy_ddp"
            )
        return cls(
            task,
            cfg.sentence_avg,
            rdrop_alpha=cfg.rdrop_alpha,
            rdrop_alpha_warmup_updates=cfg.rdrop_alpha_warmup_updates,
        )

    def forward(self, model, sample, reduce=True):
        self.require_target(sample)
        if sample["target"].numel() == 0:
            return self.empty_batch_output(model)
        if not self.rdrop_active(model):
            return super().forward(model, sample, reduce=reduce)
        adaptive_softmax = getattr(model.decoder, "adaptive_softmax", None)
        if adaptive_softmax is None:
            raise ValueError(
                "adaptive_loss_rdrop needs a model with an adaptive softmax "
                "(--adaptive-softmax-cutoff)"
            )

        net_output, target = self.forward_both_passes(model, sample)
        batch_size = target.size(0)
        features = net_output[0]
        head, tails = adaptive_log_probs(adaptive_softmax, features)
        both_targets = torch.cat([target, target]).view(-1)
        nll = self.adaptive_nll(adaptive_softmax, head, tails, both_targets)

        keep = target.ne(self.padding_idx).view(-1)
        first_tails, second_tails = zip(*(tail.chunk(2) for tail in tails))
        kl_loss = adaptive_symmetric_kl(*head.chunk(2), first_tails, second_tails, keep)
        if reduce:
            loss, kl_loss = nll.sum(), kl_loss.sum()
        else:
            loss = nll.view(2, -1).sum(0)
        alpha = self.alpha_now()
        objective = loss + alpha * kl_loss

        ntokens = int(keep.sum())
        sample_size = batch_size if self.sentence_avg else ntokens
        logging_output = {
            "loss": loss.data / 2,
            "nll_loss": loss.data / 2,
            "kl_loss": kl_loss.data,
            "ntokens": ntokens,
            "nsentences": batch_size,
            "sample_size": sample_size,
        }
        self.log_alpha(logging_output, alpha)
        return objective, sample_size, logging_output

    def adaptive_nll(self, adaptive_softmax, head, tails: List[torch.Tensor], target):
        """Per-token CE as fairseq's ``adaptive_loss`` sums it: the head term, plus
        the within-cluster term for a target in a tail cluster."""
        cluster_targets, cluster_rows = adaptive_softmax.adapt_target(target)
        nll = F.nll_loss(head, cluster_targets[0], ignore_index=self.padding_idx, reduction="none")
        for lprobs, rows, within_cluster in zip(tails, cluster_rows, cluster_targets[1:]):
            if rows is None:
                continue
            # fairseq's adaptive_loss applies ignore_index=padding_idx to the index
            # within the cluster too, dropping the tail term of the cluster's word at
            # that offset; the same here keeps training CE equal to validation's.
            nll = nll.index_add(
                0,
                rows,
                F.nll_loss(lprobs[rows], within_cluster, ignore_index=self.padding_idx, reduction="none"),
            )
        return nll

    def empty_batch_output(self, model):
        """Zero loss and the same logging keys as a real batch, so that worker
        outputs stay summable."""
        logging_output = dict.fromkeys(("loss", "ntokens", "nsentences", "sample_size"), 0)
        if self.rdrop_active(model):
            logging_output.update(nll_loss=0, kl_loss=0)
            self.log_alpha(logging_output, 0.0)
        return self.zero_loss(model), 0, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        cls.reduce_rdrop_metrics(logging_outputs)
