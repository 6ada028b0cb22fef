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
