"""R-Drop loss functions in plain PyTorch (no fairseq import).

R-Drop (Liang, Wu et al., NeurIPS 2021) feeds every batch through the model
twice with dropout on and adds, per target token, the symmetric KL divergence
between the two predicted distributions P1 and P2:

    1/2 * (KL(P1 || P2) + KL(P2 || P1)) = 1/2 * sum_v (p1_v - p2_v) * (log p1_v - log p2_v)

The right-hand form is what :func:`symmetric_kl` evaluates. It only reads the
log-probabilities (log-target form), so a probability that underflows to zero
never meets a ``log`` and gradients stay finite. A custom autograd function
keeps nothing but its two inputs for backward (log-softmax keeps those alive
anyway) and works through the tokens in row chunks, so the KL adds no
tokens x vocabulary tensor that outlives the call.

:func:`adaptive_symmetric_kl` gives the same quantity for an adaptive softmax
from the head's and each tail cluster's log-probabilities, exactly, without a
tokens x vocabulary tensor (the factorisation is derived in
``rdrop_fairseq/criterions/adaptive_loss_rdrop.py``).

These functions serve the fairseq criteria in this package and any other
training loop, e.g. a Hugging Face ``Trainer.compute_loss``::

    logits1, logits2 = model(**batch_twice).logits.chunk(2)
    loss, ce, kl, ntokens = rdrop_loss(logits1, logits2, labels, alpha=5.0)
"""

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

# Elements per chunk of rows. On a CPU the few temporaries of one chunk stay
# in cache while the chunk's element-wise steps run (2-3x faster than
# chunks of 1024 rows at V = 8000); on a GPU large chunks keep the kernel
# launches few while bounding each temporary at 128 MB.
CHUNK_ELEMENTS = {"cpu": 2**17, "cuda": 2**25}


def rows_per_chunk(tensor: torch.Tensor) -> int:
    return max(1, CHUNK_ELEMENTS.get(tensor.device.type, 2**25) // max(1, tensor.shape[-1]))


def _row_chunks(tensor: torch.Tensor):
    step = rows_per_chunk(tensor)
    for start in range(0, tensor.shape[0], step):
        yield slice(start, min(start + step, tensor.shape[0]))


def _log_ratio(a, b):
    # A class both passes give probability 0 (log-prob -inf, e.g. a masked
    # vocabulary entry) adds nothing to the KL; -inf - -inf would be NaN.
    return (a - b).nan_to_num_(nan=0.0, posinf=float("inf"), neginf=float("-inf"))


def _symmetric_kl_rows(a, b, keep, row_sums=None):
    """Per row 1/2 sum_v (p1 - p2)(a - b) of 2-D log-probabilities, 0 where not ``keep``.

    Also returns the first rows of the chunks that needed ``_log_ratio``'s care
    for a class impossible under both passes, so that backward takes the same path. With
    ``row_sums`` (a ``(2, rows)`` buffer), fills it with sum_v a and sum_v b
    while each chunk is at hand (label smoothing needs them).
    """
    out = a.new_empty(a.shape[0])
    for rows in _row_chunks(a):
        x, y = a[rows], b[rows]
        out[rows] = torch.linalg.vecdot(x.exp().sub_(y.exp()), x - y)
        if row_sums is not None:
            torch.sum(x, -1, out=row_sums[0, rows])
            torch.sum(y, -1, out=row_sums[1, rows])
    # One host-side check per call, not per chunk: on a GPU each is a synchronisation.
    careful_chunks = []
    nan_rows = out.isnan() & keep
    if nan_rows.any():
        step = rows_per_chunk(a)
        careful_chunks = sorted(set((nan_rows.nonzero().squeeze(-1) // step * step).tolist()))
        for start in careful_chunks:
            x, y = a[start : start + step], b[start : start + step]
            out[start : start + step] = torch.linalg.vecdot(x.exp().sub_(y.exp()), _log_ratio(x, y))
    return out.mul_(0.5).masked_fill_(~keep, 0.0), careful_chunks


def _symmetric_kl_grads(a, b, keep, grad_out, careful_chunks, grad_a, grad_b, uniform=None):
    """Writes the gradients of ``_symmetric_kl_rows`` w.r.t. ``a`` and ``b`` into
    ``grad_a`` and ``grad_b``, chunk by chunk. ``uniform`` (``(2, rows)``)
    adds a per-row constant to every entry of ``grad_a`` and ``grad_b``
    (label smoothing's share of the cross-entropy gradient), in the same pass.
    """
    scale = (0.5 * grad_out).masked_fill(~keep, 0.0).unsqueeze(-1)
    if uniform is not None:
        uniform = uniform.unsqueeze(-1)
    for rows in _row_chunks(a):
        x, y = a[rows], b[rows]
        p1, p2 = x.exp(), y.exp()
        log_ratio = _log_ratio(x, y) if rows.start in careful_chunks else x - y
        # d/da = s (p1 (a - b) + (p1 - p2));  d/db = -s (p2 (a - b) + (p1 - p2))
        scaled_ratio = log_ratio.mul_(scale[rows])
        term_a = (p1 - p2).mul_(scale[rows])
        if uniform is not None:
            term_a.add_(uniform[0, rows])
        torch.addcmul(term_a, p1, scaled_ratio, out=grad_a[rows])
        # -s (p1 - p2) + u_b = u_a + u_b - term_a
        term_b = term_a.neg_()
        if uniform is not None:
            term_b.add_(uniform[0, rows] + uniform[1, rows])
        torch.addcmul(term_b, p2, scaled_ratio, value=-1.0, out=grad_b[rows])
    # A masked row may hold inf/NaN log-probabilities: 0 * inf would leak NaN.
    dropped = (~keep).nonzero().squeeze(-1)
    grad_a.index_fill_(0, dropped, 0.0)
    grad_b.index_fill_(0, dropped, 0.0)


class _SymmetricKL(torch.autograd.Function):
    """Symmetric KL of two 2-D log-probability tensors, one value per row.

    Only the inputs are kept for backward (the log-softmax that made them
    keeps them alive anyway); probabilities are recomputed chunk by chunk.
    """

    @staticmethod
    def forward(ctx, lprobs1, lprobs2, keep):
        kl, ctx.careful_chunks = _symmetric_kl_rows(lprobs1, lprobs2, keep)
        ctx.save_for_backward(lprobs1, lprobs2, keep)
        return kl

    @staticmethod
    def backward(ctx, grad_out):
        lprobs1, lprobs2, keep = ctx.saved_tensors
        grad1, grad2 = torch.empty_like(lprobs1), torch.empty_like(lprobs2)
        _symmetric_kl_grads(lprobs1, lprobs2, keep, grad_out, ctx.careful_chunks, grad1, grad2)
        return grad1, grad2, None


class _SymmetricKLOfHalves(torch.autograd.Function):
    """As ``_SymmetricKL`` for one ``(2, rows, V)`` tensor holding both passes.

    Its gradient is a single ``(2, rows, V)`` buffer; splitting the tensor
    into two inputs instead would make autograd concatenate the two halves'
    gradients into a third tensor of that size.
    """

    @staticmethod
    def forward(ctx, both, keep):
        kl, ctx.careful_chunks = _symmetric_kl_rows(both[0], both[1], keep)
        ctx.save_for_backward(both, keep)
        return kl

    @staticmethod
    def backward(ctx, grad_out):
        both, keep = ctx.saved_tensors
        grad = torch.empty_like(both)
        _symmetric_kl_grads(both[0], both[1], keep, grad_out, ctx.careful_chunks, grad[0], grad[1])
        return grad, None


class _LabelSmoothedNLLAndSymmetricKL(torch.autograd.Function):
    """fairseq's label-smoothed NLL of both passes and their symmetric KL, in
    one pass over a ``(2, rows, V)`` tensor of log-probabilities.

    Separately, the cross-entropy's backward writes a dense gradient (zeros
    scattered at the targets plus the smoothing's constant) and autograd adds
    the KL's gradient to it: three extra sweeps over rows x V. Here the
    smoothing constant joins the KL gradient chunk by chunk and the target
    entries are added in place.
    """

    @staticmethod
    def forward(ctx, both, target, keep, epsilon):
        row_sums = both.new_empty(2, both.shape[1])
        kl, ctx.careful_chunks = _symmetric_kl_rows(both[0], both[1], keep, row_sums)
        target_index = target.masked_fill(~keep, 0).expand(2, -1).unsqueeze(-1)
        nll = both.gather(-1, target_index).squeeze(-1).neg_().masked_fill_(~keep, 0.0)
        smooth = row_sums.neg_().masked_fill_(~keep, 0.0)
        eps_i = epsilon / (both.shape[-1] - 1)
        loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
        ctx.save_for_backward(both, target_index, keep)
        ctx.epsilon = epsilon
        return loss, nll, kl

    @staticmethod
    def backward(ctx, grad_loss, grad_nll, grad_kl):
        both, target_index, keep = ctx.saved_tensors
        eps_i = ctx.epsilon / (both.shape[-1] - 1)
        grad = torch.empty_like(both)
        _symmetric_kl_grads(
            both[0], both[1], keep, grad_kl, ctx.careful_chunks, grad[0], grad[1],
            uniform=(-eps_i * grad_loss).masked_fill_(~keep, 0.0),
        )
        at_target = (-(1.0 - ctx.epsilon - eps_i) * grad_loss - grad_nll).masked_fill_(~keep, 0.0)
        grad.scatter_add_(-1, target_index, at_target.unsqueeze(-1))
        return grad, None, None, None


def _float32_at_least(tensor):
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _keep_rows(keep, num_rows, device):
    if keep is None:
        return torch.ones(num_rows, dtype=torch.bool, device=device)
    return keep.reshape(-1).to(device=device, dtype=torch.bool)


def symmetric_kl(
    lprobs1: torch.Tensor,
    lprobs2: torch.Tensor,
    keep: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-token 1/2 (KL(P1||P2) + KL(P2||P1)), summed over the last dimension.

    Args:
        lprobs1, lprobs2: log-probabilities of the two passes, same shape
            ``(..., V)``. Computed in float32 at least, whatever their dtype.
        keep: optional bool tensor of shape ``(...)``; positions where it is
            False (padding) give 0 and receive no gradient, whatever the
            log-probabilities hold there.

    Returns:
        A float tensor of shape ``(...)``.
    """
    if lprobs1.shape != lprobs2.shape:
        raise ValueError(
            f"symmetric_kl needs the two passes' log-probabilities to have the same "
            f"shape, got {tuple(lprobs1.shape)} and {tuple(lprobs2.shape)}"
        )
    vocab = lprobs1.shape[-1]
    a = _float32_at_least(lprobs1).reshape(-1, vocab)
    b = _float32_at_least(lprobs2).reshape(-1, vocab)
    return _SymmetricKL.apply(a, b, _keep_rows(keep, a.shape[0], a.device)).view(lprobs1.shape[:-1])


def symmetric_kl_of_halves(lprobs: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`symmetric_kl` between the first and the second half of ``lprobs``.

    For a batch run as [x; x]: ``lprobs`` is ``(2B, ..., V)`` with pass 1 in
    rows ``:B`` and pass 2 in rows ``B:``; ``keep`` and the result are
    ``(B, ...)``. Same value as ``symmetric_kl(*lprobs.chunk(2), keep)``, with
    one tensor of the size of ``lprobs`` less at the peak of backward.
    """
    if lprobs.shape[0] % 2:
        raise ValueError(
            "symmetric_kl_of_halves needs pass 1 then pass 2 along the first "
            f"dimension, so an even size; got {lprobs.shape[0]}"
        )
    both = _float32_at_least(lprobs).reshape(2, -1, lprobs.shape[-1])
    kl = _SymmetricKLOfHalves.apply(both, _keep_rows(keep, both.shape[1], both.device))
    return kl.view(lprobs.shape[0] // 2, *lprobs.shape[1:-1])


class RDropTerms(NamedTuple):
    smoothed_nll: torch.Tensor  # (2, B, ...) label-smoothed NLL of each pass and token
    nll: torch.Tensor  # (2, B, ...) NLL of each pass and token
    kl: torch.Tensor  # (B, ...) 1/2 (KL12 + KL21) per token


def label_smoothed_nll_and_symmetric_kl(
    lprobs: torch.Tensor, target: torch.Tensor, epsilon: float, ignore_index: int
) -> RDropTerms:
    """The R-Drop criterion's terms for a batch run as [x; x], in one sweep.

    ``lprobs`` is ``(2B, ..., V)`` (pass 1 in rows ``:B``, pass 2 in ``B:``),
    ``target`` ``(B, ...)``. The loss is fairseq's ``label_smoothed_nll_loss``
    per token, ``(1 - eps - eps_i) * nll + eps_i * sum_v(-log p_v)`` with
    ``eps_i = eps / (V - 1)``; the KL is :func:`symmetric_kl_of_halves`.
    Tokens whose target is ``ignore_index`` give 0 everywhere and receive no
    gradient.
    """
    batch_shape = target.shape
    if lprobs.shape[:-1] != (2 * batch_shape[0], *batch_shape[1:]):
        raise ValueError(
            f"label_smoothed_nll_and_symmetric_kl needs log-probabilities of shape "
            f"(2 x {batch_shape[0]}, {', '.join(map(str, batch_shape[1:]))}, V) for targets of shape "
            f"{tuple(batch_shape)}, got {tuple(lprobs.shape)}"
        )
    both = _float32_at_least(lprobs).reshape(2, -1, lprobs.shape[-1])
    flat_target = target.reshape(-1)
    loss, nll, kl = _LabelSmoothedNLLAndSymmetricKL.apply(both, flat_target, flat_target.ne(ignore_index), epsilon)
    return RDropTerms(loss.view(2, *batch_shape), nll.view(2, *batch_shape), kl.view(batch_shape))


class _TailClusterKL(torch.autograd.Function):
    """Per row 1/2 (w1 KL(T1||T2) + w2 KL(T2||T1)) for one tail cluster.

    ``a`` and ``b`` are the two passes' log-probabilities over the cluster's
    words (rows x cluster size), ``w1`` and ``w2`` their head probabilities of
    the cluster (rows). Only the inputs and two per-row vectors are kept for
    backward and the work goes in row chunks, so a large cluster adds no
    rows x cluster-size tensor beyond the log-probabilities themselves.
    Rows where ``keep`` is False give 0 and get a zero gradient, whatever
    the inputs hold there.
    """

    @staticmethod
    def forward(ctx, a, b, w1, w2, keep):
        kl12 = a.new_empty(a.shape[0])
        kl21 = a.new_empty(a.shape[0])
        for rows in _row_chunks(a):
            log_ratio = _log_ratio(a[rows], b[rows])
            kl12[rows] = (a[rows].exp() * log_ratio).sum(-1)
            kl21[rows] = (b[rows].exp() * log_ratio).sum(-1).neg_()
        ctx.save_for_backward(a, b, w1, w2, keep, kl12, kl21)
        return (0.5 * (w1 * kl12 + w2 * kl21)).masked_fill_(~keep, 0.0)

    @staticmethod
    def backward(ctx, grad_out):
        a, b, w1, w2, keep, kl12, kl21 = ctx.saved_tensors
        half_grad = (0.5 * grad_out).masked_fill_(~keep, 0.0)
        grad_a = torch.empty_like(a)
        grad_b = torch.empty_like(b)
        for rows in _row_chunks(a):
            p1, p2 = a[rows].exp(), b[rows].exp()
            log_ratio = _log_ratio(a[rows], b[rows])
            scale = half_grad[rows].unsqueeze(-1)
            weight1, weight2 = w1[rows].unsqueeze(-1), w2[rows].unsqueeze(-1)
            # d/da [w1 sum p1 (a - b) + w2 sum p2 (b - a)] = w1 p1 (1 + a - b) - w2 p2, and
            # d/db of it = w2 p2 (1 - (a - b)) - w1 p1, treating a and b entrywise
            # (the log-softmax backward that produced them handles normalisation).
            grad_a[rows] = (weight1 * p1 * (1.0 + log_ratio) - weight2 * p2) * scale
            grad_b[rows] = (weight2 * p2 * (1.0 - log_ratio) - weight1 * p1) * scale
        drop = ~keep.unsqueeze(-1)
        return (
            grad_a.masked_fill_(drop, 0.0),
            grad_b.masked_fill_(drop, 0.0),
            (half_grad * kl12).masked_fill_(~keep, 0.0),
            (half_grad * kl21).masked_fill_(~keep, 0.0),
            None,
        )


def adaptive_symmetric_kl(
    head_lprobs1: torch.Tensor,
    head_lprobs2: torch.Tensor,
    tail_lprobs1: Sequence[torch.Tensor],
    tail_lprobs2: Sequence[torch.Tensor],
    keep: torch.Tensor,
) -> torch.Tensor:
    """Per-token 1/2 (KL(P1||P2) + KL(P2||P1)) of two adaptive-softmax distributions.

    Args:
        head_lprobs1, head_lprobs2: ``(N, shortlist + C)`` head log-probabilities
            of the two passes, the last ``C`` columns being the tail clusters in
            order.
        tail_lprobs1, tail_lprobs2: ``C`` tensors each, ``(N, size of cluster c)``,
            the log-probabilities within each cluster.
        keep: ``(N,)`` bool; rows where it is False (padding) give 0 and receive
            no gradient.

    Returns:
        ``(N,)``: the symmetric KL between the full next-token distributions,
        in the dtype of the inputs (float32 at least).
    """
    dtype = torch.promote_types(head_lprobs1.dtype, torch.float32)
    first_cluster = head_lprobs1.shape[-1] - len(tail_lprobs1)
    kl = symmetric_kl(head_lprobs1, head_lprobs2, keep)
    for cluster, (tail1, tail2) in enumerate(zip(tail_lprobs1, tail_lprobs2)):
        column = first_cluster + cluster
        kl = kl + _TailClusterKL.apply(
            tail1.to(dtype),
            tail2.to(dtype),
            head_lprobs1[:, column].to(dtype).exp(),
            head_lprobs2[:, column].to(dtype).exp(),
            keep,
        )
    return kl


class RDropLoss(NamedTuple):
    loss: torch.Tensor  # (ce1 + ce2 + alpha * kl) / ntokens, for backward
    ce: torch.Tensor  # ce1 + ce2, summed over tokens
    kl: torch.Tensor  # sum over tokens of 1/2 (KL12 + KL21)
    ntokens: torch.Tensor  # non-ignored target tokens in one pass


def rdrop_loss(
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> RDropLoss:
    """The R-Drop objective for two passes over the same batch.

    ``(CE(pass1) + CE(pass2) + alpha * sum_tokens 1/2 (KL12 + KL21)) / ntokens``,
    the normalisation of the official fairseq code, so the paper's alpha values
    apply. Cross-entropy follows ``torch.nn.functional.cross_entropy`` (its label
    smoothing spreads ``label_smoothing / V`` over every class). Tokens whose
    target is ``ignore_index`` count for nothing.
    """
    keep = target.ne(ignore_index)
    safe_target = target.masked_fill(~keep, 0).unsqueeze(-1)
    lprobs1 = F.log_softmax(logits1.float(), dim=-1)
    lprobs2 = F.log_softmax(logits2.float(), dim=-1)
    ce = logits1.new_zeros((), dtype=lprobs1.dtype)
    for lprobs in (lprobs1, lprobs2):
        nll = -lprobs.gather(-1, safe_target).squeeze(-1)
        smooth = -lprobs.sum(-1) / lprobs.shape[-1]
        per_token = (1.0 - label_smoothing) * nll + label_smoothing * smooth
        ce = ce + per_token.masked_fill(~keep, 0.0).sum()
    kl = symmetric_kl(lprobs1, lprobs2, keep).sum()
    ntokens = keep.sum()
    loss = (ce + alpha * kl) / ntokens.clamp(min=1)
    return RDropLoss(loss, ce, kl, ntokens)
