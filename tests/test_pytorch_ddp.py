"""label_smoothed_cross_entropy_rdrop under PyTorch's DistributedDataParallel,
fairseq's default ``--ddp-backend`` on GPUs, on two gloo ranks.

DDP all-reduces gradients from hooks that each rank arms in the model's
forward; a rank that skips the forward leaves the others waiting. A training
batch with nothing after ``--ignore-prefix-size`` must therefore still run the
model (and add zero), so that both ranks end the step with the same, averaged
gradient. A hang fails through gloo's 30-second timeout or the 180-second limit.
"""

import subprocess
import sys

import torch

from .helpers.fairseq_runs import REPO
from .helpers.distributed import free_port

PREFIX = 4


def ddp_step(tmp_path, target_lengths):
    """Runs one step on two ranks, rank r's batch with targets target_lengths[r]
    long; returns each rank's saved gradients."""
    port = free_port()
    outs = [tmp_path / f"rank{rank}.pt" for rank in (0, 1)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.ddp_worker", str(rank), str(port), str(PREFIX), str(length), str(out)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        )
        for rank, (length, out) in enumerate(zip(target_lengths, outs))
    ]
    try:
        outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
    return [torch.load(out) for out in outs]


def test_a_rank_whose_batch_is_all_prefix_stays_in_step_and_adds_no_gradient(tmp_path):
    empty, normal = ddp_step(tmp_path, target_lengths=[PREFIX, PREFIX + 3])
    assert empty["alone"].abs().max() == 0, "the all-prefix batch alone gives no gradient"
    assert normal["alone"].abs().max() > 0
    # DDP averages the ranks' gradients: (0 + g) / 2 on both ranks
    for rank in (empty, normal):
        torch.testing.assert_close(rank["ddp"], normal["alone"] / 2, rtol=1e-5, atol=1e-7)
    assert torch.equal(empty["ddp"], normal["ddp"])
