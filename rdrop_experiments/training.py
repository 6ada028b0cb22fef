"""One fairseq-train run of a demo, named by what it trains, and trained once."""

import json
import os
import shutil
import time
from pathlib import Path

from rdrop_experiments.console import log
from rdrop_experiments.errors import CommandFailed, ExperimentError
from rdrop_experiments.fairseq_tools import fairseq_script, thread_env
from rdrop_experiments.processes import run_command
from rdrop_experiments.progress import TrainingProgress
from rdrop_experiments.run_tags import command_tag


class NoValidationBleu(ExperimentError):
    """fairseq found no BLEU to choose a checkpoint by: every validation translation was empty."""


class TrainingRun:
    """One training of a demo: arm, alpha, seed, its budget (``max_update`` and
    validation interval), its fairseq-train arguments ``train_args(run)``, and
    its folder in ``workdir``, named by arm, alpha, seed, updates and the
    :func:`command_tag` of those arguments, so that a finished run is reused
    only by the same command; ``position`` is its progress bar's row."""

    def __init__(self, arm, alpha, seed, budget, threads, workdir, train_args):
        self.arm, self.alpha, self.seed, self.budget = arm, alpha, seed, budget
        self.threads, self.position = threads, 0
        self.train_args = train_args(self)
        tag = command_tag("fairseq-train", self.train_args)
        self.save_dir = Path(workdir) / f"{arm}-alpha{alpha:g}-seed{seed}-{budget['max_update']}-{tag}"

    @property
    def label(self):
        return f"{self.arm} seed {self.seed}"

    @property
    def cost(self):
        # R-Drop's doubled batch costs about two baseline updates.
        return self.budget["max_update"] * (2 if self.alpha > 0 else 1)

    @property
    def finished(self):
        """The training's seconds if it finished, else None (a ``done`` marker
        that cannot be read counts as unfinished)."""
        try:
            return float(json.loads((self.save_dir / "done").read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def train_once(run):
    """``fairseq-train`` with a run's arguments and ``--save-dir``, with a progress
    bar and the full output in ``train.log`` in its folder; or the finished run.

    Returns (log file, training seconds). A run that did not finish is trained
    again from scratch, so an interrupted demo never reports a partial run."""
    log_file = run.save_dir / "train.log"
    seconds = run.finished
    if seconds is not None:
        log(f"{run.label}: reusing the finished run in {run.save_dir}")
        return log_file, seconds
    shutil.rmtree(run.save_dir, ignore_errors=True)
    run.save_dir.mkdir(parents=True)
    log(f"{run.label}: training, full log in {log_file}")
    progress = TrainingProgress(run.label, run.budget["max_update"], run.position)
    start = time.time()
    try:
        run_command([fairseq_script("fairseq-train"), *run.train_args, "--save-dir", run.save_dir], log_file,
                    env=thread_env(run.threads), on_line=progress.feed)
    except CommandFailed as failure:
        # fairseq logs no BLEU when every validation translation is empty, then
        # fails looking for the metric it chooses checkpoints by.
        if not any("KeyError: 'bleu'" in line for line in failure.tail):
            raise
        raise NoValidationBleu(
            f"{failure}\n{run.label}: every validation translation was empty (the model is not trained enough "
            "to write anything yet), so fairseq had no BLEU to choose a checkpoint by; train longer "
            "(--max-update) or validate later in training") from None
    finally:
        progress.close()
    seconds = time.time() - start
    # Written whole under another name, then renamed: a cut-off write leaves no marker.
    partial = run.save_dir / "done.tmp"
    partial.write_text(json.dumps({"seconds": seconds}))
    os.replace(partial, run.save_dir / "done")
    log(f"{run.label}: {run.budget['max_update']} updates in {seconds / 60:.1f} min ({progress.summary()})")
    return log_file, seconds
