"""One rank of tests/test_pytorch_ddp.py: a training step of
label_smoothed_cross_entropy_rdrop through torch's DistributedDataParallel, set
up as fairseq's ``--ddp-backend pytorch_ddp`` does (fairseq's own wrapper
passes ``device_ids=[device_id]``, which CPU tensors refuse).

    python -m tests.helpers.ddp_worker RANK PORT PREFIX TARGET_LENGTH OUT

Writes to OUT the rank's gradient after the step, flattened, and the gradient
that rank's batch gives without DDP (same model, same dropout seed).
"""

import copy
import datetime
import sys

import torch
import torch.distributed as dist
from fairseq.distributed import ModuleProxyWrapper
from torch.nn.parallel import DistributedDataParallel

from .tiny_fairseq import make_criterion, make_model, make_sample, make_task

DROPOUT_SEED = 7


def flat_gradient(module):
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in module.parameters()
    ])


def step(model, criterion, sample):
    torch.manual_seed(DROPOUT_SEED)
    loss, _, _ = criterion(model, sample)
    loss.backward()


def main(rank, port, prefix, target_length, out):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
        timeout=datetime.timedelta(seconds=30),
    )
    task = make_task()
    model = make_model(task, seed=0)
    alone = copy.deepcopy(model)
    criterion = make_criterion(task, ignore_prefix_size=prefix)
    sample = make_sample(task, tgt_len=target_length, seed=rank)
    # fairseq's defaults for pytorch_ddp: no buffer broadcast, every parameter used
    wrapped = ModuleProxyWrapper(DistributedDataParallel(
        model, broadcast_buffers=False, find_unused_parameters=False, bucket_cap_mb=25,
    ))
    step(wrapped, criterion, sample)
    step(alone, criterion, sample)
    torch.save({"ddp": flat_gradient(model), "alone": flat_gradient(alone)}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    rank, port, prefix, target_length, out = sys.argv[1:]
    main(int(rank), int(port), int(prefix), int(target_length), out)
