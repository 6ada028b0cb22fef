"""Helpers for tests that drive fairseq's command-line tools on real data slices."""

import gzip
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
USER_DIR = str(REPO / "rdrop_fairseq")
MULTI30K = REPO / "data" / "translation" / "multi30k"
WIKITEXT2 = REPO / "data" / "language_modeling" / "wikitext-2"

from rdrop_experiments.fairseq_logs import read_records
from rdrop_experiments.fairseq_tools import fairseq_script
from rdrop_fairseq.fairseq_fixes import FAST_PATH_COPIES


def run_tool(name, *args, timeout=600, check=True, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [fairseq_script(name), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


# What fairseq 0.12.2 keeps in a model's state beside the learned weights: its
# sinusoidal positions' uninitialised ``_float_tensor`` (there for its dtype
# and device) and its encoder layers' fast-path copies, which a loaded model
# fills from the checkpoint and a new one leaves at zero.
NOT_LEARNED = ("_float_tensor", *FAST_PATH_COPIES)


def learned_state(state):
    """A model's state without the entries named in NOT_LEARNED."""
    return {name: value for name, value in state.items() if name.rpartition(".")[2] not in NOT_LEARNED}


def head_lines(path, count):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(count)]


def write_lines(path, lines):
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def train_records(log_path, tag="train_inner"):
    return read_records(log_path, tag)


# A tiny encoder-decoder (any architecture's sizes), a tiny transformer, and
# the training flags the CLI tests share.
TINY_DIMS = [
    "--encoder-layers", 1, "--decoder-layers", 1,
    "--encoder-embed-dim", 64, "--decoder-embed-dim", 64,
    "--encoder-ffn-embed-dim", 128, "--decoder-ffn-embed-dim", 128,
    "--encoder-attention-heads", 2, "--decoder-attention-heads", 2,
    "--dropout", 0.2,
]
TINY_TRANSFORMER = ["--arch", "transformer", "--share-all-embeddings", *TINY_DIMS]
COMMON_TRAIN = [
    "--user-dir", USER_DIR, "--cpu", "--seed", 3, "--num-workers", 0,
    "--optimizer", "adam", "--lr", 3e-3, "--lr-scheduler", "inverse_sqrt", "--warmup-updates", 10,
    "--log-format", "json", "--log-interval", 5, "--no-epoch-checkpoints",
]
RDROP = ["--criterion", "label_smoothed_cross_entropy_rdrop", "--rdrop-alpha", 5]


def assert_shell_script_parses_and_is_strict(script):
    """``bash -n`` accepts it, it runs under ``set -euo pipefail`` and says in its header what it does."""
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = Path(script).read_text()
    assert "set -euo pipefail" in text and text.splitlines()[1].startswith("# ")


def assert_script_fails_fast(script, args, env, message):
    """The script stops within seconds, naming the problem (``message``) in an error
    or usage line, with a bare PATH: its input checks come before any tool is looked for."""
    start = time.monotonic()
    r = subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), **env})
    assert r.returncode != 0
    assert message in r.stderr and ("error" in r.stderr or "usage" in r.stderr), r.stderr
    assert time.monotonic() - start < 10
    return r.stderr
