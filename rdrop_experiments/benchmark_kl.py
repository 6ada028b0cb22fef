"""The benchmark's part 1: the KL term alone, forward and backward, ours against the official R-Drop formula."""

import argparse
import statistics

import torch
import torch.nn.functional as F

from rdrop_experiments.benchmark_measure import Meter, paired_ratio, run_child
from rdrop_experiments.console import log
from rdrop_fairseq.loss import symmetric_kl_of_halves

# The last: an mBART-sized vocabulary at the most tokens for which the official
# formula's 11 GiB fit in a 23 GiB machine.
KL_SIZES = [(2048, 8000), (2048, 32000), (8192, 8000), (8192, 32000), (1024, 250000)]
# --quick: small sizes, a smoke test
QUICK_KL_SIZES = [(256, 1000), (512, 4000)]
KL_IMPLS = ("official", "ours", "ours+lsm")


def kl_size(text):
    """``NxV`` on the command line: N tokens per pass, vocabulary V."""
    tokens, _, vocab = text.partition("x")
    if not (tokens.isdigit() and vocab.isdigit()):
        raise argparse.ArgumentTypeError(f"expected TOKENSxVOCAB such as 1024x250000, got {text!r}")
    return int(tokens), int(vocab)


def official_kl(logits, pad_mask):
    """The official R-Drop code's KL (and upstream fairseq's), from the doubled logits."""
    lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
    probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    p, q = torch.split(lprobs, lprobs.size(0) // 2, dim=0)
    p_tec, q_tec = torch.split(probs, probs.size(0) // 2, dim=0)
    p_loss = F.kl_div(p, q_tec, reduction="none")
    q_loss = F.kl_div(q, p_tec, reduction="none")
    p_loss.masked_fill_(pad_mask, 0.0)
    q_loss.masked_fill_(pad_mask, 0.0)
    return (p_loss.sum() + q_loss.sum()) / 2


def kl_functions(keep):
    pad_mask = ~keep.unsqueeze(-1)
    return {
        "official": lambda logits: official_kl(logits, pad_mask),
        "ours": lambda lprobs: symmetric_kl_of_halves(lprobs, keep).sum(),
        "ours+lsm": lambda logits: symmetric_kl_of_halves(F.log_softmax(logits, -1, dtype=torch.float32), keep).sum(),
    }


def kl_case(impl, tokens, vocab, device, reps):
    """One implementation at N ``tokens`` and vocabulary ``vocab``: its peak
    memory above the inputs and the times of ``reps`` forward+backward passes
    (run in a process of its own, :func:`run_child`)."""
    meter = Meter(device)
    gen = torch.Generator(device=device).manual_seed(0)
    keep = torch.rand(tokens, generator=gen, device=device) > 0.1
    inputs = torch.randn(2 * tokens, vocab, generator=gen, device=device).mul_(3.0)
    if impl == "ours":
        inputs = inputs.log_softmax(-1)
    inputs.requires_grad_()

    def step(x, keep):
        x.grad = None
        kl_functions(keep)[impl](x).backward()

    # loads kernels and allocator pools before the peak is taken
    step(inputs.detach()[:64].clone().requires_grad_(), keep[:32])
    in_use = meter.start_peak()
    step(inputs, keep)
    extra = meter.peak() - in_use
    times = [meter.time(lambda: step(inputs, keep)) for _ in range(reps)]
    return {"peak_extra_mib": round(extra, 1), "times": times}


def benchmark_kl(args, log_path):
    """Every implementation at every size of the command line's ``args``
    (``--kl-sizes``, else the full table or ``--quick``'s), each case in a fresh
    process whose output goes to ``log_path``."""
    sizes = args.kl_sizes or (QUICK_KL_SIZES if args.quick else KL_SIZES)
    rows = []
    for tokens, vocab in sizes:
        for impl in KL_IMPLS:
            result = run_child({"part": "kl", "impl": impl, "tokens": tokens, "vocab": vocab,
                                "device": args.device, "reps": args.kl_reps}, args.threads, log_path)
            rows.append({"tokens": tokens, "vocab": vocab, "impl": impl,
                         "median_s": statistics.median(result["times"]), **result})
            log(f"KL N={tokens} V={vocab} {impl}: {rows[-1]['median_s']:.3f} s, "
                f"+{result['peak_extra_mib']:.0f} MiB")
    return rows


def kl_ratios(rows):
    """Ours and ours+lsm against the official formula, per case: time (paired) and extra memory."""
    by_case = {}
    for row in rows:
        by_case.setdefault((row["tokens"], row["vocab"]), {})[row["impl"]] = row
    ratios = []
    for (tokens, vocab), impls in by_case.items():
        official = impls["official"]
        for impl in ("ours", "ours+lsm"):
            ratios.append({
                "tokens": tokens, "vocab": vocab, "impl": impl,
                "time_vs_official": paired_ratio(impls[impl]["times"], official["times"]),
                # None where the official formula's extra memory is below what the meter resolves
                "extra_memory_vs_official": (impls[impl]["peak_extra_mib"] / official["peak_extra_mib"]
                                             if official["peak_extra_mib"] > 0 else None),
            })
    return ratios
