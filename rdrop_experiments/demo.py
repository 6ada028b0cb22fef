"""The loop every CPU demo shares: baseline against R-Drop over seeds, from command line to table.

A demo is a :class:`Demo` subclass that supplies only what differs: its data
and their preparation, its task and model flags, its evaluation and its
table's columns. :func:`main` runs one from the command line.
"""

import argparse
import inspect
import os
import sys
from pathlib import Path

from rdrop_experiments import data_prep
from rdrop_experiments.console import log, print_table
from rdrop_experiments.errors import ExperimentError
from rdrop_experiments.fairseq_tools import REPO, USER_DIR, require_fairseq
from rdrop_experiments.processes import STOP_SIGNALS, interrupt_on_sigterm_and_sighup, signal_of
from rdrop_experiments.results import write_results
from rdrop_experiments.scheduler import RunsStopped, run_arms
from rdrop_experiments.statistics import describe_gain, paired_gain, seed_rows
from rdrop_experiments.training import train_once


class Demo:
    """What a demo supplies. Class attributes: ``name`` (its work folder is
    ``runs/<name>-demo``), ``title`` (of its curves), ``data`` (the shipped
    files it prepares), ``setup`` (the chosen values, overridable with --set),
    ``budgets`` (name -> max_update, interval, seeds, compute_matched, setup
    changes, evaluation settings), ``alpha``, ``criterion``, ``default_minutes``
    and ``launcher`` (its run_demo.sh); ``compared`` names the metric of
    ``gain_scores``, {label: score(seed entry)}, compared paired by seed."""

    name = title = launcher = compared = None
    data = None
    setup, budgets, gain_scores = {}, {}, {}
    alpha = 5.0
    criterion = "label_smoothed_cross_entropy_rdrop"
    default_minutes = 15

    def prepare_data(self, folder, setup, budget):
        """Writes the binarized data into ``folder / "data-bin"`` and returns that path."""
        raise NotImplementedError

    def data_parameters(self, setup, budget):
        """The setup and budget values the prepared data depend on."""
        raise NotImplementedError

    def train_flags(self, setup, budget):
        """fairseq-train's task, model, optimiser and evaluation flags."""
        raise NotImplementedError

    def score(self, bin_dir, run, setup, budget, log_file):
        """The figures of one finished run (a dict stored in results.json)."""
        raise NotImplementedError

    def columns(self):
        """The table's columns after run, alpha, updates and seed: (header, cell(arm, value_of))."""
        raise NotImplementedError


def train_args(demo, bin_dir, run, setup):
    """fairseq-train's arguments of one run: what every demo trains with, then the demo's flags."""
    budget = run.budget
    return [
        bin_dir, "--user-dir", USER_DIR, "--cpu", "--seed", run.seed,
        "--criterion", demo.criterion, "--rdrop-alpha", run.alpha, "--max-update", budget["max_update"],
        "--validate-interval", 100000, "--validate-interval-updates", budget["interval"],
        "--save-interval", 100000, "--save-interval-updates", budget["interval"],
        "--keep-interval-updates", 1, "--no-epoch-checkpoints",
        "--log-format", "json", "--log-interval", 25, "--num-workers", 0,
        *demo.train_flags(setup, budget),
    ]


def parse_command_line(demo, argv=None):
    """(args, budget, setup) of a demo's command line, after the budget's own
    setup changes and the --set overrides."""
    parser = argparse.ArgumentParser(description=inspect.getdoc(sys.modules[type(demo).__module__]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(demo.budgets), default=os.environ.get("RDROP_DEMO_BUDGET", "default"),
                        help=f"update budget (env RDROP_DEMO_BUDGET): default takes about {demo.default_minutes} "
                             "minutes on 2 cores once the environment is set up")
    parser.add_argument("--full", action="store_const", const="full", dest="budget", help="same as --budget full")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="seeds; each trains every arm (default: the budget's, seed 1 unless it says)")
    parser.add_argument("--alpha", type=float, default=demo.alpha, help="--rdrop-alpha of the R-Drop arm")
    parser.add_argument("--max-update", type=int, help="override the budget's number of updates")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a setup value, e.g. --set dropout=0.2; keys: {', '.join(demo.setup)}")
    parser.add_argument("--jobs", type=int, default=2, help="fairseq runs side by side (default 2)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads per fairseq process (default: the CPU cores divided by --jobs, at least 1)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / f"{demo.name}-demo")
    args = parser.parse_args(argv)
    for flag, value in (("--jobs", args.jobs), ("--threads", args.threads), ("--max-update", args.max_update)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be a whole number >= 1, got {value}")
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    budget = dict(demo.budgets[args.budget])
    if args.seeds is None:
        args.seeds = list(budget.get("seeds", [1]))
    if args.max_update:
        budget["max_update"] = args.max_update
    setup = {**demo.setup, **budget.get("setup", {})}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in demo.setup:
            parser.error(f"--set {item}: unknown key {key!r}; known: {', '.join(demo.setup)}")
        setup[key] = type(demo.setup[key])(value)
    return args, budget, setup


def prepared_data(demo, work, setup, budget):
    """The demo's binarized data in ``work``, prepared unless data made from the
    same files, parameters and preparation code are there already."""
    folder = work / data_prep.data_folder_name(
        [demo.data], demo.data_parameters(setup, budget), [sys.modules[type(demo).__module__], data_prep])
    bin_dir = folder / "data-bin"
    if bin_dir.is_dir():
        log(f"reusing {bin_dir}")
        return bin_dir
    return demo.prepare_data(folder, setup, budget)


def gains(demo, results):
    """{"rdrop - <baseline arm>": {label: paired gain}} for every baseline arm."""
    return {
        f"rdrop - {baseline}": {label: paired_gain(results, score, baseline=baseline)
                                for label, score in demo.gain_scores.items()}
        for baseline in results["runs"] if baseline.startswith("baseline")
    }


def print_results(demo, results):
    """One row per run and seed, then the mean and standard deviation over seeds, then the gains."""
    columns = demo.columns()
    header = ["run", "alpha", "updates", "seed"] + [title for title, _ in columns] + ["train min"]
    rows = [
        [name, f"{arm['alpha']:g}", str(arm["max_update"]), label]
        + [cell(arm, value_of) for _, cell in columns]
        + [f"{value_of(lambda s: s['train_seconds']) / 60:.1f}"]
        for name, arm in results["runs"].items()
        for label, value_of in seed_rows(arm)
    ]
    print_table(header, rows)
    for comparison, compared in results["gains"].items():
        print(f"{comparison}, {demo.compared}, paired by seed:")
        for label, gain in compared.items():
            print(f"  {label}: {describe_gain(gain)}")


def run(demo, argv=None):
    """Prepares the data, trains and scores every arm and seed, writes
    ``results.json`` and ``curves.png`` and prints the table."""
    args, budget, setup = parse_command_line(demo, argv)
    require_fairseq(demo.launcher)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    log(f"budget {args.budget}: {budget['max_update']} updates per run, setup {setup}, seeds {args.seeds}")
    bin_dir = prepared_data(demo, work, setup, budget)

    def train_and_score(run):
        log_file, seconds = train_once(run)
        return {"train_seconds": round(seconds, 1), "log": str(log_file),
                **demo.score(bin_dir, run, setup, budget, log_file)}

    results = run_arms(args, budget, setup, lambda run: train_args(demo, bin_dir, run, setup), train_and_score)
    results["gains"] = gains(demo, results)
    write_results(results, work, title=f"{demo.title}, {budget['max_update']} updates")
    print()
    print_results(demo, results)
    log(f"wrote {work / 'results.json'} and {work / 'curves.png'}")
    return results


def as_program(work):
    """Runs ``work()`` as a program's body: SIGTERM and SIGHUP stop it as Ctrl-C
    does; stopped, it says what was kept and exits with 128 + the signal's
    number; a failure prints its message and exits with 1."""
    interrupt_on_sigterm_and_sighup()
    try:
        work()
    except RunsStopped as stopped:
        sys.exit(stopped.status)
    except KeyboardInterrupt as interrupt:
        signum = signal_of(interrupt)
        log(f"stopped by {STOP_SIGNALS[signum]}; data folders are used only once complete, so the next start "
            "prepares again whatever was not")
        sys.exit(128 + signum)
    except ExperimentError as failure:
        print(f"error: {failure}", file=sys.stderr)
        sys.exit(1)


def main(demo, argv=None):
    """Runs a demo from the command line (:func:`run` as a program)."""
    as_program(lambda: run(demo, argv))
