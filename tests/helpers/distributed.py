"""Two fairseq-train processes on CPU standing in for two GPUs: gloo, one
thread each, as users would launch one process per GPU."""

import os
import socket
import subprocess

from .fairseq_runs import REPO, fairseq_script


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_flags(rank, port):
    return [
        "--distributed-world-size", 2, "--distributed-rank", rank,
        "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn", "--device-id", 0,
        "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
    ]


def launch(args, env=None):
    return subprocess.Popen(
        [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), **(env or {})),
    )


def finish(procs, timeout=600):
    """Waits for every process; a failure shows the output of each."""
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    failed = [(i, out) for i, (p, out) in enumerate(zip(procs, outputs)) if p.returncode != 0]
    assert not failed, "\n".join(f"--- process {i}:\n{out[-3000:]}" for i, out in failed)
    return outputs


def train_on_two_ranks(args, env=None):
    """``fairseq-train ARGS`` as ranks 0 and 1; returns their outputs."""
    port = free_port()
    return finish([launch([fairseq_script("fairseq-train"), *args, *rank_flags(rank, port)], env) for rank in (0, 1)])


# A criterion registered as NAME that extends CLASS (from MODULE, with its config
# CONFIG): in training its dropout masks are drawn from the batch's ids and the
# update, so one rank and two ranks draw the same ones for the same sentences, and
# each micro-batch's logging output (kl_loss and COUNTED) goes to $RDROP_RECORD.<pid>
# before fairseq sums them.
RECORDING_CRITERION = """
import json, os
import torch
from fairseq.criterions import register_criterion
from {module} import {cls}, {config}

@register_criterion("{name}", dataclass={config})
class Recording({cls}):
    def forward(self, model, sample, reduce=True):
        ids = int(sample["id"].sum())
        if model.training:
            torch.manual_seed(ids + 100003 * self.num_updates_done())
        loss, sample_size, log = super().forward(model, sample, reduce)
        if model.training:
            with open(os.environ["RDROP_RECORD"] + f".{{os.getpid()}}", "a") as f:
                f.write(json.dumps({{"update": self.num_updates_done() + 1, "ids": ids,
                                    "kl_loss": float(log["kl_loss"]), "{counted}": int(log["{counted}"])}}) + "\\n")
        return loss, sample_size, log
"""


def write_recording_criterion(user_dir, name, module, cls, config, counted):
    """A --user-dir in ``user_dir`` holding :data:`RECORDING_CRITERION` for ``cls``."""
    user_dir.mkdir()
    (user_dir / "__init__.py").write_text(RECORDING_CRITERION.format(
        name=name, module=module, cls=cls, config=config, counted=counted))
    return user_dir
