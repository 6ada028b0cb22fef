"""fairseq's console scripts: finding them, their thread environment, and the calls the demos share."""

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

from rdrop_experiments.console import log
from rdrop_experiments.errors import FairseqNotFound, IncompleteOutput
from rdrop_experiments.processes import command_line, run_command

# The checkout the demos run in (its data/ and runs/), and the plugin's folder for --user-dir.
REPO = Path(__file__).resolve().parents[1]
USER_DIR = Path(importlib.util.find_spec("rdrop_fairseq").origin).parent


def fairseq_script(name):
    """The path of a fairseq console script, preferring the running interpreter's environment; None if absent."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def require_fairseq(launcher):
    if fairseq_script("fairseq-train") is None:
        raise FairseqNotFound(f"fairseq-train is not on PATH: run bash {launcher}, "
                              "or activate an environment with fairseq-fixed installed")


def thread_env(threads):
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def run_or_reuse(cmd, output, env=None, announce=None):
    """Runs a command with its whole output kept in ``output`` (logging
    ``announce`` first), unless ``output`` holds the output of the same command
    line already. Written under a temporary name and renamed once the command
    has succeeded, so a cut-off or failed command leaves nothing to reuse."""
    output = Path(output)
    if output.exists():
        with open(output, encoding="utf-8", errors="replace") as made:
            if made.readline() == f"$ {command_line(cmd)}\n":
                return
    if announce:
        log(announce)
    partial = output.with_name(output.name + ".tmp")
    partial.unlink(missing_ok=True)
    run_command(cmd, partial, env=env)
    partial.rename(output)


# The small transformer and optimiser of the sequence-to-sequence demos, chosen on
# Multi30k's validation set (examples/translation/README.md) and kept for SciTLDR.
SMALL_TRANSFORMER = {
    "encoder_layers": 2,
    "decoder_layers": 2,
    "embed_dim": 128,
    "ffn_dim": 512,
    "heads": 4,
    "dropout": 0.1,
    "lr": 2e-3,
    "warmup": 200,
    "max_tokens": 2048,
}


def transformer_args(setup):
    """fairseq-train options of a demo's small transformer and its optimiser:
    shared embeddings, Adam, inverse square root schedule, label smoothing 0.1."""
    return [
        "--arch", "transformer", "--share-all-embeddings",
        "--encoder-layers", setup["encoder_layers"], "--decoder-layers", setup["decoder_layers"],
        "--encoder-embed-dim", setup["embed_dim"], "--decoder-embed-dim", setup["embed_dim"],
        "--encoder-ffn-embed-dim", setup["ffn_dim"], "--decoder-ffn-embed-dim", setup["ffn_dim"],
        "--encoder-attention-heads", setup["heads"], "--decoder-attention-heads", setup["heads"],
        "--dropout", setup["dropout"], "--attention-dropout", 0.1, "--activation-dropout", 0.1,
        "--label-smoothing", 0.1,
        "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", setup["lr"], "--clip-norm", 0.0,
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", setup["warmup"], "--warmup-init-lr", 1e-7,
        "--weight-decay", 0.0001, "--max-tokens", setup["max_tokens"],
    ]


def generate(bin_dir, run, split, options, sentences):
    """{sentence id: detokenized hypothesis} of ``fairseq-generate OPTIONS`` with a
    run's checkpoint_best.pt on ``split``, whose whole output is kept as
    ``generate-{split}.txt`` in the run's folder and reused by the same command.
    Raises :class:`IncompleteOutput` when any of the split's ``sentences`` has no hypothesis."""
    out = run.save_dir / f"generate-{split}.txt"
    run_or_reuse(
        [
            fairseq_script("fairseq-generate"), bin_dir, "--user-dir", USER_DIR,
            "--path", run.save_dir / "checkpoint_best.pt", "--gen-subset", split, "--cpu",
            # fairseq otherwise drops a last batch whose size is not a multiple of 8
            "--required-batch-size-multiple", 1, *options,
        ],
        out, env=thread_env(run.threads), announce=f"{run.label}: generating {split}, log in {out}",
    )
    hyps = read_hypotheses(out)
    missing = sorted(set(range(sentences)) - set(hyps))
    if missing:
        raise IncompleteOutput(f"{out} has no hypothesis for {len(missing)} of the {sentences} sentences of "
                               f"{split} (ids {missing[:5]}...); delete it and run the demo again")
    return hyps


def read_hypotheses(generate_output):
    """{sentence id: detokenized hypothesis} from fairseq-generate's D- lines."""
    hyps = {}
    for line in Path(generate_output).read_text(encoding="utf-8").splitlines():
        match = re.match(r"^D-(\d+)\t[^\t]*\t(.*)$", line)
        if match:
            hyps[int(match.group(1))] = match.group(2)
    return hyps
