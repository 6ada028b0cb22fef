"""Runs a demo's trainings ``--jobs`` at a time, and stops them all on a signal or a failure."""

import queue
import signal
import threading
import time
import traceback

from rdrop_experiments.console import log
from rdrop_experiments.errors import ExperimentError, Stopped
from rdrop_experiments.processes import STOP_SIGNALS, accept_commands, signal_of, stop_running_commands, stopping
from rdrop_experiments.training import TrainingRun


class RunsStopped(Exception):
    """The runs were stopped (the last lines said which finished); ``status`` is
    the exit status a shell gives: 1 for a failure, 128 + the signal's number for a signal."""

    def __init__(self, reason, status):
        super().__init__(reason)
        self.status = status


def arms(alpha, budget):
    """(name, alpha, updates) of each arm: the baseline, R-Drop, and where the budget
    sets ``compute_matched``, the baseline given twice the updates, about the
    compute (wall time) of an R-Drop run."""
    updates = budget["max_update"]
    chosen = [("baseline", 0.0, updates), ("rdrop", alpha, updates)]
    if budget.get("compute_matched"):
        chosen.append(("baseline_2x", 0.0, 2 * updates))
    return chosen


def planned_runs(args, budget, train_args):
    """A :class:`TrainingRun` for every arm and seed of the command line ``args``."""
    return [TrainingRun(name, alpha, seed, dict(budget, max_update=updates), args.threads, args.workdir, train_args)
            for name, alpha, updates in arms(args.alpha, budget) for seed in args.seeds]


def run_arms(args, budget, setup, train_args, train_and_score):
    """The results of a demo: for every arm and seed, the dict
    ``train_and_score(run)`` returns for a :class:`TrainingRun` whose
    fairseq-train arguments are ``train_args(run)``. Runs go ``--jobs`` at a
    time, longest first.

    Ctrl-C (or SIGTERM, SIGHUP) or a failing run stops the demo: no further run
    starts, every running command ends with its processes, the last lines list
    what became of each run, and :class:`RunsStopped` is raised."""
    runs = planned_runs(args, budget, train_args)
    results = {"budget": args.budget, "max_update": budget["max_update"], "setup": setup,
               "threads": args.threads, "jobs": args.jobs,
               "runs": {name: {"alpha": alpha, "max_update": updates, "seeds": []}
                        for name, alpha, updates in arms(args.alpha, budget)}}
    queued = queue.SimpleQueue()
    for run in sorted(runs, key=lambda r: -r.cost):
        queued.put(run)
    outcomes = {}  # run: ("finished", result) | ("stopped", None) | ("failed", exception)
    accept_commands()

    def work(position, finished):
        try:
            while not stopping():
                try:
                    run = queued.get_nowait()
                except queue.Empty:
                    return
                run.position = position
                try:
                    outcomes[run] = ("finished", train_and_score(run))
                except Stopped:
                    outcomes[run] = ("stopped", None)
                except BaseException as failure:  # a failed command, or any error
                    outcomes[run] = ("failed", failure)
                    stop_running_commands()
        finally:
            finished.set()

    # The main thread polls flags rather than joining the workers: Python 3.11's
    # Thread.join() interrupted by Ctrl-C can take a running thread for ended.
    finished = [threading.Event() for _ in range(args.jobs)]
    for position, flag in enumerate(finished):
        threading.Thread(target=work, args=(position, flag), daemon=True).start()
    signum = None
    try:
        while not all(flag.is_set() for flag in finished):
            time.sleep(0.1)
    except KeyboardInterrupt as interrupt:
        signum = signal_of(interrupt)
        # A second Ctrl-C must not cut the stopping short and leave processes behind.
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
        stop_running_commands()
        for flag in finished:
            flag.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    failures = [(run, failure) for run, (state, failure) in outcomes.items() if state == "failed"]
    if signum is not None or failures:
        for run, failure in failures:
            text = str(failure) if isinstance(failure, ExperimentError) else "".join(traceback.format_exception(failure))
            log(f"{run.label} failed: {text}")
        reason = (f"stopped by {STOP_SIGNALS[signum]}" if signum is not None
                  else f"stopped because {failures[0][0].label} failed")
        report_stop(runs, outcomes, reason)
        raise RunsStopped(reason, 1 if signum is None else 128 + signum)
    for run in runs:
        results["runs"][run.arm]["seeds"].append({"seed": run.seed, **outcomes[run][1]})
    return results


def report_stop(runs, outcomes, reason):
    """The last lines of a stopped demo: what became of each run, and its folder."""
    states = {run: outcomes.get(run, ("not started", None))[0] for run in runs}
    counts = ", ".join(f"{sum(s == state for s in states.values())} {state}"
                       for state in ("finished", "stopped", "failed", "not started"))
    log(f"{reason}: {counts}")
    for run in runs:
        state = states[run]
        if state == "finished":
            fate = "finished, kept: the next start reuses it"
        elif state == "not started":
            log(f"  {run.label}: not started")
            continue
        elif run.finished is not None:
            fate = f"{state} after training; the training is kept, the evaluation runs again next time"
        else:
            fate = f"{state}; trained again from the start next time"
        log(f"  {run.label}: {fate}; logs in {run.save_dir}")
