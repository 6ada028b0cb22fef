"""Float64 references written from the definitions, independent of the code under test."""

import torch


def reference_symmetric_kl(logits1, logits2, keep=None):
    """1/2 (sum_v p log(p/q) + sum_v q log(q/p)) per token, in float64, from logits.

    log p comes from log_softmax rather than log(softmax) so that p = 0 in a
    term gives 0 * finite, as the definition intends, instead of 0 * -inf.
    """
    log_p = torch.log_softmax(logits1.double(), -1)
    log_q = torch.log_softmax(logits2.double(), -1)
    p, q = log_p.exp(), log_q.exp()
    kl_pq = (p * (log_p - log_q)).sum(-1)
    kl_qp = (q * (log_q - log_p)).sum(-1)
    value = 0.5 * (kl_pq + kl_qp)
    if keep is not None:
        value = torch.where(keep, value, torch.zeros_like(value))
    return value


def reference_label_smoothed_ce(logits, target, epsilon, keep):
    """torch's smoothing: (1 - eps) * (-log p_target) + eps * mean_v(-log p_v), summed over kept tokens."""
    lprobs = torch.log_softmax(logits.double(), -1)
    total = torch.zeros((), dtype=torch.float64)
    for index in keep.nonzero().tolist():
        row = lprobs[tuple(index)]
        nll = -row[target[tuple(index)]]
        total = total + (1 - epsilon) * nll + epsilon * (-row.mean())
    return total


def reference_fairseq_label_smoothed_ce(lprobs, target, epsilon, keep):
    """fairseq's smoothing: (1 - eps - eps/(V-1)) * nll + eps/(V-1) * sum_v(-log p_v), summed over kept tokens.

    Returns (loss, nll) sums in float64.
    """
    lprobs = lprobs.double()
    vocab = lprobs.shape[-1]
    eps_i = epsilon / (vocab - 1)
    loss = torch.zeros((), dtype=torch.float64)
    nll_sum = torch.zeros((), dtype=torch.float64)
    for index in keep.nonzero().tolist():
        row = lprobs[tuple(index)]
        nll = -row[target[tuple(index)]]
        loss = loss + (1 - epsilon - eps_i) * nll + eps_i * (-row.sum())
        nll_sum = nll_sum + nll
    return loss, nll_sum


def reference_rdrop_terms(logits, target, pad, epsilon, alpha, prefix=0):
    """The R-Drop criterion's objective, logged sums and accuracy counts from the
    doubled batch's logits (pass 1 in the first half), in float64."""
    batch = target.size(0)
    logits, target = logits[:, prefix:], target[:, prefix:]
    keep = target.ne(pad)
    halves = logits.double().split(batch)
    ls, nll = zip(
        *(reference_fairseq_label_smoothed_ce(h.log_softmax(-1), target, epsilon, keep) for h in halves)
    )
    kl = reference_symmetric_kl(halves[0], halves[1], keep).sum()
    correct = sum(h.argmax(-1).eq(target)[keep].sum().item() for h in halves)
    return {
        "objective": sum(ls) + alpha * kl,
        "loss": sum(ls) / 2,
        "nll_loss": sum(nll) / 2,
        "kl_loss": kl,
        "n_correct": correct,
        "total": 2 * int(keep.sum()),
    }
