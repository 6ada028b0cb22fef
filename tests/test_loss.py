"""The pure-PyTorch R-Drop loss against float64 references written from the definition."""

import contextlib

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from rdrop_fairseq.loss import (
    label_smoothed_nll_and_symmetric_kl,
    rdrop_loss,
    rows_per_chunk,
    symmetric_kl,
    symmetric_kl_of_halves,
)

from .helpers.references import reference_fairseq_label_smoothed_ce, reference_label_smoothed_ce, reference_symmetric_kl


def _logits(*shape, scale=3.0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _keep_mask(batch, length, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    return torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)


def test_symmetric_kl_equals_float64_reference_with_padding():
    x1, x2 = _logits(4, 7, 50, seed=1), _logits(4, 7, 50, seed=2)
    keep = _keep_mask(4, 7)
    ours = symmetric_kl(x1.log_softmax(-1), x2.log_softmax(-1), keep)
    ref = reference_symmetric_kl(x1, x2, keep)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    assert ours[~keep].eq(0).all()


def test_symmetric_kl_matches_reference_across_row_chunks():
    rows = 2 * rows_per_chunk(torch.empty(0, 11)) + 3
    x1, x2 = _logits(rows, 11, seed=3), _logits(rows, 11, seed=4)
    ours = symmetric_kl(x1.log_softmax(-1), x2.log_softmax(-1))
    torch.testing.assert_close(ours.double(), reference_symmetric_kl(x1, x2), rtol=1e-5, atol=1e-6)


def test_symmetric_kl_is_symmetric_in_its_arguments():
    lp1, lp2 = _logits(3, 5, 20, seed=5).log_softmax(-1), _logits(3, 5, 20, seed=6).log_softmax(-1)
    torch.testing.assert_close(symmetric_kl(lp1, lp2), symmetric_kl(lp2, lp1))


def test_symmetric_kl_is_zero_for_identical_passes():
    lp = _logits(3, 5, 20, seed=7).log_softmax(-1)
    assert symmetric_kl(lp, lp.clone()).abs().max().item() == 0.0


def test_symmetric_kl_is_non_negative():
    for seed in range(20):
        x1, x2 = _logits(8, 30, scale=0.01 * (seed + 1), seed=seed), _logits(8, 30, seed=seed + 100)
        assert symmetric_kl(x1.log_softmax(-1), x2.log_softmax(-1)).min().item() >= 0.0


def test_symmetric_kl_gradient_passes_gradcheck_through_both_inputs():
    x1 = _logits(3, 4, 6, seed=8, dtype=torch.float64).requires_grad_()
    x2 = _logits(3, 4, 6, seed=9, dtype=torch.float64).requires_grad_()
    keep = _keep_mask(3, 4, seed=1)
    assert torch.autograd.gradcheck(
        lambda a, b: symmetric_kl(a.log_softmax(-1), b.log_softmax(-1), keep), (x1, x2)
    )


def test_symmetric_kl_gradient_equals_float64_reference_gradient():
    x1 = _logits(5, 6, 40, seed=10).requires_grad_()
    x2 = _logits(5, 6, 40, seed=11).requires_grad_()
    keep = _keep_mask(5, 6, seed=2)
    symmetric_kl(x1.log_softmax(-1), x2.log_softmax(-1), keep).sum().backward()
    r1 = x1.detach().double().requires_grad_()
    r2 = x2.detach().double().requires_grad_()
    reference_symmetric_kl(r1, r2, keep).sum().backward()
    torch.testing.assert_close(x1.grad.double(), r1.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(x2.grad.double(), r2.grad, rtol=1e-4, atol=1e-6)


def test_logits_at_padding_positions_change_neither_value_nor_gradient():
    keep = _keep_mask(4, 7, seed=3)
    x1, x2 = _logits(4, 7, 30, seed=12), _logits(4, 7, 30, seed=13)
    y1, y2 = x1.clone(), x2.clone()
    y1[~keep] = _logits(int((~keep).sum()), 30, scale=1e4, seed=14)
    y2[~keep] = -y1[~keep]

    def value_and_grads(a, b):
        a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
        value = symmetric_kl(a.log_softmax(-1), b.log_softmax(-1), keep).sum()
        value.backward()
        return value.detach(), a.grad, b.grad

    value_x, *grads_x = value_and_grads(x1, x2)
    value_y, *grads_y = value_and_grads(y1, y2)
    assert value_x.item() == value_y.item()
    for gx, gy in zip(grads_x, grads_y):
        assert gy[~keep].eq(0).all()
        torch.testing.assert_close(gx, gy)


def test_non_finite_log_probabilities_at_padding_give_zero_value_and_gradient():
    keep = _keep_mask(4, 7, seed=5)
    lp1 = _logits(4, 7, 30, seed=21).log_softmax(-1)
    lp2 = _logits(4, 7, 30, seed=22).log_softmax(-1)
    lp1[~keep], lp2[~keep] = float("nan"), float("-inf")
    lp1.requires_grad_(), lp2.requires_grad_()
    kl = symmetric_kl(lp1, lp2, keep)
    kl.sum().backward()
    assert torch.isfinite(kl).all() and kl[~keep].eq(0).all()
    assert lp1.grad[~keep].eq(0).all() and lp2.grad[~keep].eq(0).all()
    assert torch.isfinite(lp1.grad).all() and torch.isfinite(lp2.grad).all()


def test_a_class_impossible_under_both_passes_contributes_nothing():
    x1, x2 = _logits(3, 10, seed=23), _logits(3, 10, seed=24)
    masked1, masked2 = x1.clone(), x2.clone()
    masked1[:, 4] = masked2[:, 4] = float("-inf")
    kl = symmetric_kl(masked1.log_softmax(-1), masked2.log_softmax(-1))
    keep_classes = [v for v in range(10) if v != 4]
    ref = reference_symmetric_kl(x1[:, keep_classes], x2[:, keep_classes])
    torch.testing.assert_close(kl.double(), ref, rtol=1e-5, atol=1e-6)


def test_a_class_impossible_under_both_passes_leaves_the_gradient_of_the_others_exact():
    rows = rows_per_chunk(torch.empty(0, 10)) + 2  # the impossible class sits in the second chunk only
    x1, x2 = _logits(rows, 10, seed=30), _logits(rows, 10, seed=31)
    masked1, masked2 = x1.clone(), x2.clone()
    masked1[-1, 4] = masked2[-1, 4] = float("-inf")
    masked1.requires_grad_(), masked2.requires_grad_()
    symmetric_kl(masked1.log_softmax(-1), masked2.log_softmax(-1)).sum().backward()
    others = [v for v in range(10) if v != 4]
    r1, r2 = x1.double().requires_grad_(), x2.double().requires_grad_()
    ref = reference_symmetric_kl(r1[:-1], r2[:-1]).sum() + reference_symmetric_kl(r1[-1:, others], r2[-1:, others]).sum()
    ref.backward()
    assert masked1.grad[-1, 4] == 0 and masked2.grad[-1, 4] == 0
    torch.testing.assert_close(masked1.grad[:-1].double(), r1.grad[:-1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(masked1.grad[-1, others].double(), r1.grad[-1, others], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(masked2.grad[-1, others].double(), r2.grad[-1, others], rtol=1e-4, atol=1e-6)



def test_impossible_classes_in_several_chunks_give_the_reference_value_and_gradient():
    step = rows_per_chunk(torch.empty(0, 10))
    rows = 3 * step + 2  # four chunks; the impossible class in the first and the third only
    x1, x2 = _logits(rows, 10, seed=32), _logits(rows, 10, seed=33)
    masked1, masked2 = x1.clone(), x2.clone()
    impossible = torch.zeros(rows, dtype=torch.bool)
    impossible[[1, 2 * step + 3]] = True
    masked1[impossible, 4] = masked2[impossible, 4] = float("-inf")
    masked1.requires_grad_(), masked2.requires_grad_()
    kl = symmetric_kl(masked1.log_softmax(-1), masked2.log_softmax(-1))
    kl.sum().backward()
    others = [v for v in range(10) if v != 4]
    r1, r2 = x1.double().requires_grad_(), x2.double().requires_grad_()
    ref = reference_symmetric_kl(r1, r2, ~impossible)
    ref[impossible] = reference_symmetric_kl(r1[impossible][:, others], r2[impossible][:, others])
    ref.sum().backward()
    torch.testing.assert_close(kl.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert masked1.grad[impossible, 4].eq(0).all() and masked2.grad[impossible, 4].eq(0).all()
    torch.testing.assert_close(masked1.grad[:, others].double(), r1.grad[:, others], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(masked2.grad[:, others].double(), r2.grad[:, others], rtol=1e-4, atol=1e-6)


aten = torch.ops.aten
# Operators that read tensor values on the host (on a GPU each waits for every
# queued kernel): item(), bool(), float(), int() and indexing with a tensor go
# through _local_scalar_dense; the others have an output size that depends on
# the values.
HOST_READING_OPS = {
    aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default, aten.unique_dim.default,
    aten._unique2.default, aten.unique_consecutive.default, aten.bincount.default, aten.repeat_interleave.Tensor,
}
# Tensor methods that copy values to the host; on a CPU they read memory without an operator.
HOST_READING_METHODS = {"tolist", "numpy", "__array__", "__dlpack__"}


class _ReadingOps(TorchDispatchMode):
    def __init__(self, reads):
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1])
        if func in HOST_READING_OPS or boolean_index:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


class _ReadingMethods(TorchFunctionMode):
    def __init__(self, reads):
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in HOST_READING_METHODS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def host_reads():
    """The list of every read of tensor values on the host inside the block."""
    reads = []
    with _ReadingMethods(reads), _ReadingOps(reads):
        yield reads


def test_host_reads_sees_every_way_of_reading_a_value():
    t = torch.tensor([0.5, 2.0])
    for read in (lambda: t[0].item(), lambda: bool(t[0]), lambda: float(t[0]), lambda: int(t[1]), t.tolist,
                 t.numpy, lambda: [0, 1, 2][t.long()[1]], t.nonzero, lambda: t[t > 1], lambda: f"{t[0]:.1f}"):
        with host_reads() as reads:
            read()
        assert len(reads) == 1, read
    with host_reads() as reads:
        (t.exp() * 2).sum()
    assert reads == []


VOCAB = 10


def _kl_of_two_passes(chunks):
    rows = chunks * rows_per_chunk(torch.empty(0, VOCAB))
    return symmetric_kl(_logits(rows, VOCAB, seed=34).log_softmax(-1).requires_grad_(),
                        _logits(rows, VOCAB, seed=35).log_softmax(-1).requires_grad_())


def _kl_of_halves(chunks):
    rows = chunks * rows_per_chunk(torch.empty(0, VOCAB))
    return symmetric_kl_of_halves(_logits(2 * rows, VOCAB, seed=36).log_softmax(-1).requires_grad_())


def _fused_terms(chunks):
    rows = chunks * rows_per_chunk(torch.empty(0, VOCAB))
    lprobs = _logits(2, rows, VOCAB, seed=37).log_softmax(-1).requires_grad_()
    target = torch.randint(2, VOCAB, (1, rows), generator=torch.Generator().manual_seed(38))
    terms = label_smoothed_nll_and_symmetric_kl(lprobs, target, 0.1, 1)
    return terms.smoothed_nll.sum() + terms.kl.sum()


LOSSES = [_kl_of_two_passes, _kl_of_halves, _fused_terms]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
def test_the_forward_pass_reads_one_value_on_the_host_whatever_the_number_of_chunks(loss):
    # the one read: whether any kept row needs the careful path for a class impossible in both passes
    with host_reads() as reads:
        loss(5)
    assert reads == ["aten._local_scalar_dense.default"]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
def test_the_backward_passs_host_reads_do_not_grow_with_the_number_of_chunks(loss):
    reads = {}
    for chunks in (1, 5):
        value = loss(chunks).sum()
        with host_reads() as reads[chunks]:
            value.backward()
    assert reads[5] == reads[1] and len(reads[1]) <= 1

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_large_logits_give_finite_kl_and_gradients(dtype):
    big = torch.finfo(torch.float16).max
    x1 = (_logits(4, 6, 64, scale=1.0, seed=15) * 3e4).clamp(-big, big).to(dtype).requires_grad_()
    x2 = (_logits(4, 6, 64, scale=1.0, seed=16) * 3e4).clamp(-big, big).to(dtype).requires_grad_()
    target = torch.randint(0, 64, (4, 6), generator=torch.Generator().manual_seed(1))
    out = rdrop_loss(x1, x2, target, alpha=5.0)
    out.loss.backward()
    assert out.kl.dtype == torch.float32
    assert torch.isfinite(out.kl) and out.kl > 0 and torch.isfinite(out.loss)
    assert torch.isfinite(x1.grad.float()).all() and torch.isfinite(x2.grad.float()).all()
    torch.testing.assert_close(
        out.kl.double(), reference_symmetric_kl(x1.detach(), x2.detach()).sum(), rtol=1e-4, atol=1e-3
    )


def test_alpha_so_large_that_the_kl_dominates_stays_finite():
    x1 = _logits(4, 6, 64, scale=50.0, seed=25).requires_grad_()
    x2 = _logits(4, 6, 64, scale=50.0, seed=26).requires_grad_()
    target = torch.randint(0, 64, (4, 6), generator=torch.Generator().manual_seed(2))
    out = rdrop_loss(x1, x2, target, alpha=1e6)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(x1.grad).all() and torch.isfinite(x2.grad).all()


def test_mismatched_pass_shapes_are_rejected_with_both_shapes_named():
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(3, 5\)"):
        symmetric_kl(torch.zeros(2, 5), torch.zeros(3, 5))


def test_symmetric_kl_of_halves_equals_float64_reference_across_row_chunks_with_padding():
    batch, length = 3, rows_per_chunk(torch.empty(0, 13)) // 2 + 5  # 3 * length rows per pass: several chunks
    logits = _logits(2 * batch, length, 13, seed=27)
    keep = _keep_mask(batch, length, seed=6)
    ours = symmetric_kl_of_halves(logits.log_softmax(-1), keep)
    ref = reference_symmetric_kl(logits[:batch], logits[batch:], keep)
    assert ours.shape == (batch, length) and ours[~keep].eq(0).all()
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)


def test_symmetric_kl_of_halves_gradient_equals_float64_reference_gradient():
    logits = _logits(6, 5, 40, seed=28).requires_grad_()
    keep = _keep_mask(3, 5, seed=7)
    symmetric_kl_of_halves(logits.log_softmax(-1), keep).sum().backward()
    ref_logits = logits.detach().double().requires_grad_()
    reference_symmetric_kl(ref_logits[:3], ref_logits[3:], keep).sum().backward()
    torch.testing.assert_close(logits.grad.double(), ref_logits.grad, rtol=1e-4, atol=1e-6)


def test_symmetric_kl_of_halves_gives_zero_value_and_gradient_at_non_finite_padding():
    keep = _keep_mask(2, 6, seed=8)
    lprobs = _logits(4, 6, 30, seed=29).log_softmax(-1)
    lprobs[:2][~keep], lprobs[2:][~keep] = float("nan"), float("-inf")
    lprobs.requires_grad_()
    kl = symmetric_kl_of_halves(lprobs, keep)
    kl.sum().backward()
    assert torch.isfinite(kl).all() and kl[~keep].eq(0).all()
    assert torch.isfinite(lprobs.grad).all()
    assert lprobs.grad[:2][~keep].eq(0).all() and lprobs.grad[2:][~keep].eq(0).all()


def test_symmetric_kl_of_halves_rejects_an_odd_number_of_rows():
    with pytest.raises(ValueError, match="even size; got 5"):
        symmetric_kl_of_halves(torch.zeros(5, 3, 7))


def _padded_targets(batch, length, vocab, keep, pad=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (batch, length), generator=gen).masked_fill(~keep, pad)


def test_fused_terms_equal_fairseq_label_smoothing_and_the_kl_in_float64_per_pass_and_token():
    batch, length, vocab, pad = 3, rows_per_chunk(torch.empty(0, 17)) // 2 + 5, 17, 1
    logits = _logits(2 * batch, length, vocab, seed=32)
    keep = _keep_mask(batch, length, seed=9)
    target = _padded_targets(batch, length, vocab, keep, pad)
    terms = label_smoothed_nll_and_symmetric_kl(logits.log_softmax(-1), target, 0.1, pad)
    assert terms.smoothed_nll.shape == terms.nll.shape == (2, batch, length) and terms.kl.shape == (batch, length)
    for half, rows in enumerate((slice(None, batch), slice(batch, None))):
        lprobs = torch.log_softmax(logits[rows].double(), -1)
        for b, t in keep.nonzero().tolist()[:40]:
            one = torch.zeros_like(keep)
            one[b, t] = True
            loss, nll = reference_fairseq_label_smoothed_ce(lprobs, target, 0.1, one)
            torch.testing.assert_close(terms.smoothed_nll[half, b, t].double(), loss, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(terms.nll[half, b, t].double(), nll, rtol=1e-5, atol=1e-5)
    assert terms.smoothed_nll[:, ~keep].eq(0).all() and terms.nll[:, ~keep].eq(0).all()
    ref_kl = reference_symmetric_kl(logits[:batch], logits[batch:], keep)
    torch.testing.assert_close(terms.kl.double(), ref_kl, rtol=1e-5, atol=1e-6)


def test_fused_terms_gradient_equals_float64_reference_gradient():
    batch, length, vocab, pad = 3, 5, 40, 1
    logits = _logits(2 * batch, length, vocab, seed=33).requires_grad_()
    keep = _keep_mask(batch, length, seed=10)
    target = _padded_targets(batch, length, vocab, keep, pad, seed=1)
    terms = label_smoothed_nll_and_symmetric_kl(logits.log_softmax(-1), target, 0.1, pad)
    (terms.smoothed_nll.sum() + 0.3 * terms.nll.sum() + 5.0 * terms.kl.sum()).backward()
    ref_logits = logits.detach().double().requires_grad_()
    ref = 5.0 * reference_symmetric_kl(ref_logits[:batch], ref_logits[batch:], keep).sum()
    for rows in (slice(None, batch), slice(batch, None)):
        loss, nll = reference_fairseq_label_smoothed_ce(torch.log_softmax(ref_logits[rows], -1), target, 0.1, keep)
        ref = ref + loss + 0.3 * nll
    ref.backward()
    torch.testing.assert_close(logits.grad.double(), ref_logits.grad, rtol=1e-4, atol=1e-6)


def test_fused_terms_give_zero_value_and_gradient_at_non_finite_padding():
    keep = _keep_mask(2, 6, seed=11)
    target = _padded_targets(2, 6, 30, keep, pad=1, seed=2)
    lprobs = _logits(4, 6, 30, seed=34).log_softmax(-1)
    lprobs[:2][~keep], lprobs[2:][~keep] = float("nan"), float("-inf")
    lprobs.requires_grad_()
    terms = label_smoothed_nll_and_symmetric_kl(lprobs, target, 0.1, 1)
    (terms.smoothed_nll.sum() + terms.kl.sum()).backward()
    for value in terms:
        assert torch.isfinite(value).all()
    assert torch.isfinite(lprobs.grad).all()
    assert lprobs.grad[:2][~keep].eq(0).all() and lprobs.grad[2:][~keep].eq(0).all()


def test_fused_terms_reject_log_probabilities_that_are_not_twice_the_targets():
    with pytest.raises(ValueError, match=r"\(2 x 3, 4, V\).*\(3, 4\), got \(5, 4, 7\)"):
        label_smoothed_nll_and_symmetric_kl(torch.zeros(5, 4, 7), torch.zeros(3, 4, dtype=torch.long), 0.1, 1)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_rdrop_loss_equals_the_objective_written_out_in_float64(label_smoothing):
    x1, x2 = _logits(3, 5, 17, seed=17), _logits(3, 5, 17, seed=18)
    target = torch.randint(0, 17, (3, 5), generator=torch.Generator().manual_seed(0))
    target[~_keep_mask(3, 5, seed=4)] = -100
    keep = target.ne(-100)
    alpha = 0.7
    out = rdrop_loss(x1, x2, target, alpha=alpha, label_smoothing=label_smoothing)
    ce_ref = sum(reference_label_smoothed_ce(x, target, label_smoothing, keep) for x in (x1, x2))
    kl_ref = reference_symmetric_kl(x1, x2, keep).sum()
    ntokens = keep.sum().item()
    torch.testing.assert_close(out.ce.double(), ce_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.kl.double(), kl_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        out.loss.double(), (ce_ref + alpha * kl_ref) / ntokens, rtol=1e-5, atol=1e-6
    )
    assert out.ntokens.item() == ntokens


def test_rdrop_loss_cross_entropy_agrees_with_torch_cross_entropy():
    x1, x2 = _logits(6, 13, seed=19), _logits(6, 13, seed=20)
    target = torch.tensor([0, 3, -100, 12, 5, -100])
    out = rdrop_loss(x1, x2, target, alpha=0.0, label_smoothing=0.1)
    torch_ce = sum(
        torch.nn.functional.cross_entropy(x, target, reduction="sum", label_smoothing=0.1)
        for x in (x1, x2)
    )
    torch.testing.assert_close(out.ce, torch_ce)
