"""Plumbing shared by the CPU demos (examples/*/demo_*.py).

Each demo trains a baseline (``--rdrop-alpha 0``) and an R-Drop arm with the
same setup, seed and update budget; this module holds what they have in
common: finding fairseq's console scripts, running them with a log, caching
finished trainings, the command-line options and the results table.
"""

import argparse
import hashlib
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path

from scripts.fairseq_logs import curves, parse_record, plot

REPO = Path(__file__).resolve().parents[1]
USER_DIR = REPO / "rdrop_fairseq"


def tool(name):
    """A fairseq console script, preferring the running interpreter's environment."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def require_fairseq(launcher):
    if tool("fairseq-train") is None:
        raise SystemExit(f"fairseq-train is not on PATH: run bash {launcher}, "
                         "or activate an environment with fairseq-fixed installed")


def log(message):
    """A line above the progress bars (plain print would tear them)."""
    from tqdm import tqdm

    tqdm.write(f"[demo] {message}", file=sys.stdout)
    sys.stdout.flush()


def thread_env(threads):
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


# Commands running now, so that stopping the demo (Ctrl-C, or a failing run)
# can end them, and whether the demo is stopping, so that no command starts then.
_RUNNING = set()
_RUNNING_LOCK = threading.Lock()
_STOPPING = threading.Event()
# Seconds a stopped command has to exit after SIGTERM before its processes are killed.
STOP_GRACE = 5


class DemoStopped(Exception):
    """A command that was stopped, or not started, because the demo is stopping."""


def command_line(cmd):
    return " ".join(str(c) for c in cmd)


def run_command(cmd, log_path, env=None, on_line=None):
    """Runs a command with its output appended to log_path, feeding each line to
    ``on_line``; on failure, stops with the log's last lines and its path.

    The command runs in a process group of its own, so that stopping the demo
    ends it with every process it started, and a terminal's Ctrl-C reaches the
    demo alone, which then stops its commands itself. While the demo is
    stopping, a command is not started, and one that was stopped raises
    :class:`DemoStopped`."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail = deque(maxlen=30)
    # Line-buffered, so the log can be followed (tail -f) while the command runs.
    with open(log_path, "a", encoding="utf-8", buffering=1) as sink:
        sink.write(f"$ {command_line(cmd)}\n")
        with _RUNNING_LOCK:
            if _STOPPING.is_set():
                raise DemoStopped(f"{Path(str(cmd[0])).name} not started: the demo is stopping")
            proc = subprocess.Popen(
                [str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                errors="replace", start_new_session=True,
            )
            _RUNNING.add(proc)
        try:
            for line in proc.stdout:
                sink.write(line)
                tail.append(line)
                if on_line:
                    on_line(line)
            proc.wait()
            # What the command left running in its group ends with it.
            _signal_group(proc, signal.SIGKILL)
        except BaseException:
            # Ctrl-C while the main thread runs a command (data preparation).
            end_process_groups([proc])
            raise
        finally:
            proc.stdout.close()
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
    if proc.returncode != 0:
        if _STOPPING.is_set():
            raise DemoStopped(f"{Path(str(cmd[0])).name} stopped; its log: {log_path}")
        raise SystemExit(
            f"{Path(str(cmd[0])).name} failed (exit status {proc.returncode}); the last lines of its log:\n"
            + "".join(tail) + f"full log: {log_path}"
        )


def run_once(cmd, output, env=None, announce=None):
    """Runs a command with its whole output kept in ``output`` (logging
    ``announce`` first), unless ``output`` holds the output of the same command
    line already. Written under a temporary name and renamed when the command
    has succeeded, so that an interrupted or failed command leaves nothing to
    be reused."""
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


def _signal_group(proc, signum):
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass  # the whole group has exited


def end_process_groups(procs, grace=STOP_GRACE):
    """Ends each command with every process of its group: SIGTERM, then, for
    whatever is left after ``grace`` seconds (a process that ignores SIGTERM, or
    one its command started and left behind), SIGKILL."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc, signal.SIGKILL)


def stop_running_commands():
    """Stops the demo's commands: none starts from now on, and every running one
    ends with its process group."""
    with _RUNNING_LOCK:
        _STOPPING.set()
        running = list(_RUNNING)
    end_process_groups(running)


class TrainingProgress:
    """A progress bar for one fairseq-train run, fed with its ``--log-format json``
    output: updates done of the budget, the latest training loss and KL, the
    latest validation loss and BLEU, and the time left."""

    def __init__(self, name, max_update, position):
        from tqdm import tqdm

        interactive = sys.stdout.isatty()
        self.bar = tqdm(
            total=max_update, desc=name, unit="upd", position=position, leave=False, file=sys.stdout,
            dynamic_ncols=interactive, ncols=None if interactive else 120, mininterval=1 if interactive else 60,
        )
        self.figures = {}

    def feed(self, line):
        parsed = parse_record(line)
        if parsed is None:
            return
        tag, record = parsed
        if tag == "train_inner":
            keys = {"loss": "loss", "kl_loss": "kl"}
            updates = record.get("num_updates")
        elif tag == "valid":
            keys = {"valid_loss": "valid loss", "valid_bleu": "valid BLEU"}
            updates = record.get("valid_num_updates")
        else:
            return
        for key, label in keys.items():
            if isinstance(record.get(key), float):
                self.figures[label] = record[key]
        order = ("loss", "kl", "valid loss", "valid BLEU")
        self.figures = {label: self.figures[label] for label in order if label in self.figures}
        if isinstance(updates, float) and updates > self.bar.n:
            self.bar.update(int(updates) - self.bar.n)
        self.bar.set_postfix_str(self.summary(), refresh=False)

    def summary(self):
        return ", ".join(f"{label} {value:.3g}" for label, value in self.figures.items())

    def close(self):
        self.bar.close()


def fairseq_train(run):
    """``fairseq-train`` with a :class:`DemoRun`'s arguments and ``--save-dir``,
    with a progress bar and the full output in ``train.log`` in its folder, or
    the cached result of a finished run.

    Returns (log file, training seconds). A run that did not finish is started
    again from scratch, so an interrupted demo never reports a partial run.
    """
    log_file = run.save_dir / "train.log"
    done = run.save_dir / "done"
    if done.exists():
        log(f"{run.label}: reusing the finished run in {run.save_dir}")
        return log_file, json.loads(done.read_text())["seconds"]
    shutil.rmtree(run.save_dir, ignore_errors=True)
    run.save_dir.mkdir(parents=True)
    log(f"{run.label}: training, full log in {log_file}")
    progress = TrainingProgress(run.label, run.budget["max_update"], run.position)
    start = time.time()
    try:
        run_command([tool("fairseq-train"), *run.train_args, "--save-dir", run.save_dir], log_file,
                    env=thread_env(run.threads), on_line=progress.feed)
    except SystemExit as failure:
        if "KeyError: 'bleu'" not in str(failure):
            raise
        # fairseq logs no BLEU when every validation translation is empty, then
        # fails looking for the metric it chooses checkpoints by.
        raise SystemExit(f"{failure}\n{run.label}: every validation translation was empty (the model is not "
                         "trained enough to write anything yet), so fairseq had no BLEU to choose a checkpoint "
                         "by; train longer (--max-update) or validate later in training") from None
    finally:
        progress.close()
    seconds = time.time() - start
    done.write_text(json.dumps({"seconds": seconds}))
    log(f"{run.label}: {run.budget['max_update']} updates in {seconds / 60:.1f} min ({progress.summary()})")
    return log_file, seconds


def add_demo_arguments(parser, setup, budgets, alpha, workdir, default_minutes):
    """The options every demo has: budget, seeds, alpha, setup overrides, threads,
    workdir; ``default_minutes``: the default budget's measured time, end to end."""
    parser.add_argument("--budget", choices=sorted(budgets), default=os.environ.get("RDROP_DEMO_BUDGET", "default"),
                        help=f"update budget (env RDROP_DEMO_BUDGET): default takes about {default_minutes} minutes "
                             "on 2 cores once the environment is set up")
    parser.add_argument("--full", action="store_const", const="full", dest="budget", help="same as --budget full")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="seeds; each trains every arm (default: the budget's, seed 1 unless it says)")
    parser.add_argument("--alpha", type=float, default=alpha, help="--rdrop-alpha of the R-Drop arm")
    parser.add_argument("--max-update", type=int, help="override the budget's number of updates")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a setup value, e.g. --set dropout=0.2; keys: {', '.join(setup)}")
    parser.add_argument("--jobs", type=int, default=2, help="fairseq runs side by side (default 2)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads per fairseq process (default: the CPU cores divided by --jobs, at least 1)")
    parser.add_argument("--workdir", type=Path, default=workdir)


def resolve_setup(args, parser, setup, budgets):
    """(budget, setup) after the budget's own setup changes and the --set overrides."""
    for flag, value in (("--jobs", args.jobs), ("--threads", args.threads), ("--max-update", args.max_update)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be a whole number >= 1, got {value}")
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    budget = dict(budgets[args.budget])
    if args.seeds is None:
        args.seeds = list(budget.get("seeds", [1]))
    if args.max_update:
        budget["max_update"] = args.max_update
    resolved = {**setup, **budget.get("setup", {})}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in setup:
            parser.error(f"--set {item}: unknown key {key!r}; known: {', '.join(setup)}")
        resolved[key] = type(setup[key])(value)
    return budget, resolved


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def seed_sd(values):
    """The sample standard deviation (n - 1 in the denominator) of per-seed values."""
    values = list(values)
    if len(values) < 2:
        raise ValueError("a standard deviation over seeds needs at least two seeds")
    centre = mean(values)
    return math.sqrt(sum((v - centre) ** 2 for v in values) / (len(values) - 1))


def seed_rows(arm):
    """The rows of an arm's table as (label, figure): one per seed, then, with
    several seeds, their mean and standard deviation. ``figure(score)`` gives the
    row's value of ``score(seed entry)``."""
    seeds = arm["seeds"]
    rows = [(str(s["seed"]), lambda score, s=s: score(s)) for s in seeds]
    if len(seeds) > 1:
        rows.append(("mean", lambda score: mean(map(score, seeds))))
        rows.append(("sd", lambda score: seed_sd(map(score, seeds))))
    return rows


def paired_gain(results, score, arm="rdrop", baseline="baseline"):
    """``score(seed entry)`` of ``arm`` minus ``baseline``'s, paired by seed: the
    per-seed differences, their mean, standard deviation and the standard error
    of the mean (sd / sqrt(n)); sd and se are None for a single seed."""
    runs = results["runs"]
    base = {s["seed"]: score(s) for s in runs[baseline]["seeds"]}
    diffs = {s["seed"]: score(s) - base[s["seed"]] for s in runs[arm]["seeds"] if s["seed"] in base}
    if not diffs:
        raise ValueError(f"{arm} and {baseline} have no seed in common")
    sd = seed_sd(diffs.values()) if len(diffs) > 1 else None
    return {
        "per_seed": {str(seed): round(d, 4) for seed, d in diffs.items()},
        "mean": round(mean(diffs.values()), 4),
        "sd": None if sd is None else round(sd, 4),
        "se": None if sd is None else round(sd / math.sqrt(len(diffs)), 4),
        "seeds": len(diffs),
    }


def describe_gain(gain):
    """``+1.23`` for one seed; ``+1.23 (3 seeds; sd 0.40, standard error 0.23)`` for several."""
    text = f"{gain['mean']:+.2f}"
    if gain["sd"] is not None:
        text += f" ({gain['seeds']} seeds; sd {gain['sd']:.2f}, standard error {gain['se']:.2f})"
    return text


def print_table(header, rows):
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))


def demo_parser(doc):
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def content_hash(path):
    """A sha1 of what a file or folder holds: each file's path inside it and its
    bytes, in sorted order. Logs and Python's byte-code caches are left out:
    they change from one making to the next without changing the content."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: a command's path argument must exist to be identified "
                                "by its content")
    if path.is_file():
        files = [path]
    else:
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix not in (".log", ".pyc")
                       and "__pycache__" not in f.relative_to(path).parts)
    digest = hashlib.sha1()
    for file in files:
        data = file.read_bytes()
        digest.update(f"{file.relative_to(path).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def command_tag(program, args):
    """A short hash naming what ``program ARGS`` makes: every argument in order,
    each path standing for its content (:func:`content_hash`). So a change to
    any flag, to the data or to the plugin's code (``--user-dir``) gives a new
    tag, while the same data and code elsewhere (another work folder, another
    clone) give the same one."""
    digest = hashlib.sha1(program.encode())
    for arg in args:
        digest.update(b"\0" + (f"<{content_hash(arg)}>" if isinstance(arg, Path) else str(arg)).encode())
    return digest.hexdigest()[:8]


class DemoRun:
    """One training of a demo: arm, alpha, seed, its budget (``max_update`` and
    validation interval), its fairseq-train arguments, ``train_args(run)``, and
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


def sentencepiece_encode(raw, sp_dir, splits, sides, vocab_size):
    """Trains one sentencepiece model on the training text of every side and
    writes each ``raw/{split}.{side}`` as pieces to ``sp_dir/{split}.{side}``."""
    import sentencepiece as spm

    log(f"training a {vocab_size}-piece sentencepiece model in {sp_dir}")
    sp_dir.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=[str(raw / f"train.{side}") for side in sides],
        model_prefix=str(sp_dir / "spm"),
        vocab_size=vocab_size,
        character_coverage=1.0,
        model_type="unigram",
        input_sentence_size=1_000_000,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(sp_dir / "spm.model"))
    for split in splits:
        for side in sides:
            lines = (raw / f"{split}.{side}").read_text(encoding="utf-8").splitlines()
            pieces = [" ".join(p) for p in sp.encode(lines, out_type=str)]
            (sp_dir / f"{split}.{side}").write_text("\n".join(pieces) + "\n", encoding="utf-8")


def binarize_pairs(prefixes, source, target, bin_dir):
    """fairseq-preprocess with a joined dictionary into bin_dir, which appears
    only once complete. ``prefixes`` maps train/valid/test to file prefixes
    (a list for several test sets)."""
    tmp_bin = bin_dir.with_name(bin_dir.name + ".tmp")
    shutil.rmtree(tmp_bin, ignore_errors=True)
    tests = prefixes["test"] if isinstance(prefixes["test"], list) else [prefixes["test"]]
    log(f"binarizing into {bin_dir}, log in {bin_dir.parent / 'preprocess.log'}")
    run_command(
        [
            tool("fairseq-preprocess"), "--source-lang", source, "--target-lang", target, "--joined-dictionary",
            "--trainpref", prefixes["train"], "--validpref", prefixes["valid"],
            "--testpref", ",".join(str(p) for p in tests), "--destdir", tmp_bin, "--workers", "2",
        ],
        bin_dir.parent / "preprocess.log",
    )
    tmp_bin.rename(bin_dir)


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
    run's checkpoint_best.pt on ``split``, whose output (the whole log) is kept as
    ``generate-{split}.txt`` in the run's folder and reused by the same command
    (:func:`run_once`). Stops when any of the split's ``sentences`` has no
    hypothesis."""
    out = run.save_dir / f"generate-{split}.txt"
    run_once(
        [
            tool("fairseq-generate"), bin_dir, "--user-dir", USER_DIR, "--path", run.save_dir / "checkpoint_best.pt",
            "--gen-subset", split, "--cpu",
            # fairseq otherwise drops a last batch whose size is not a multiple of 8
            "--required-batch-size-multiple", 1, *options,
        ],
        out, env=thread_env(run.threads), announce=f"{run.label}: generating {split}, log in {out}",
    )
    hyps = read_hypotheses(out)
    missing = sorted(set(range(sentences)) - set(hyps))
    if missing:
        raise SystemExit(f"{out} has no hypothesis for {len(missing)} of the {sentences} sentences of {split} "
                         f"(ids {missing[:5]}...); delete it and run the demo again")
    return hyps


def read_hypotheses(generate_output):
    """{sentence id: detokenized hypothesis} from fairseq-generate's D- lines."""
    hyps = {}
    for line in Path(generate_output).read_text(encoding="utf-8").splitlines():
        match = re.match(r"^D-(\d+)\t[^\t]*\t(.*)$", line)
        if match:
            hyps[int(match.group(1))] = match.group(2)
    return hyps


def start_demo(doc, setup, budgets, alpha, workdir, launcher, default_minutes, argv=None):
    """(args, budget, setup) of a demo's command line, with fairseq checked and
    the work folder created: the start every demo's main() shares."""
    parser = demo_parser(doc)
    add_demo_arguments(parser, setup, budgets, alpha=alpha, workdir=workdir, default_minutes=default_minutes)
    args = parser.parse_args(argv)
    budget, resolved = resolve_setup(args, parser, setup, budgets)
    require_fairseq(launcher)
    args.workdir.mkdir(parents=True, exist_ok=True)
    log(f"budget {args.budget}: {budget['max_update']} updates per run, setup {resolved}, seeds {args.seeds}")
    return args, budget, resolved


def arms(args, budget):
    """(name, alpha, updates) of each arm: the baseline, R-Drop, and where the budget
    sets ``compute_matched``, the baseline given twice the updates, about the
    compute (wall time) of an R-Drop run."""
    updates = budget["max_update"]
    chosen = [("baseline", 0.0, updates), ("rdrop", args.alpha, updates)]
    if budget.get("compute_matched"):
        chosen.append(("baseline_2x", 0.0, 2 * updates))
    return chosen


def run_arms(args, budget, setup, train_args, train_and_score):
    """The results of a demo: for every arm and seed, the dict
    ``train_and_score(run)`` returns for a :class:`DemoRun` whose fairseq-train
    arguments are ``train_args(run)``. Runs go ``--jobs`` at a time, longest
    first; finished runs are found again by their command (:class:`DemoRun`).

    Ctrl-C (or SIGTERM, SIGHUP) or a failing run stops the demo: no further run
    starts, every running command ends with its processes, and the last lines
    list the runs that finished (kept, reused next time), were stopped and were
    not started, with their folders; the exit status is 1 for a failure and
    128 + the signal's number for a signal (130 for Ctrl-C), as shells give."""
    results = {"budget": args.budget, "max_update": budget["max_update"], "setup": setup,
               "threads": args.threads, "jobs": args.jobs, "runs": {}}
    runs = []
    for name, alpha, updates in arms(args, budget):
        results["runs"][name] = {"alpha": alpha, "max_update": updates, "seeds": []}
        runs += [DemoRun(name, alpha, seed, dict(budget, max_update=updates), args.threads, args.workdir, train_args)
                 for seed in args.seeds]
    queued = queue.SimpleQueue()
    for run in sorted(runs, key=lambda r: -r.cost):
        queued.put(run)
    outcomes = {}  # run: ("finished", result) | ("stopped", None) | ("failed", exception)
    _STOPPING.clear()

    def work(position, finished):
        try:
            while not _STOPPING.is_set():
                try:
                    run = queued.get_nowait()
                except queue.Empty:
                    return
                run.position = position
                try:
                    outcomes[run] = ("finished", train_and_score(run))
                except DemoStopped:
                    outcomes[run] = ("stopped", None)
                except BaseException as failure:  # SystemExit of a failed command, or any error
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
        signum = getattr(interrupt, "signum", signal.SIGINT)
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
            text = str(failure) if isinstance(failure, SystemExit) else "".join(traceback.format_exception(failure))
            log(f"{run.label} failed: {text}")
        report_stop(runs, outcomes, f"stopped by {STOP_SIGNALS[signum]}" if signum is not None
                    else f"stopped because {failures[0][0].label} failed")
        raise SystemExit(1 if signum is None else 128 + signum)
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
        elif (run.save_dir / "done").exists():
            fate = f"{state} after training; the training is kept, the evaluation runs again next time"
        else:
            fate = f"{state}; trained again from the start next time"
        log(f"  {run.label}: {fate}; logs in {run.save_dir}")


# The signals that stop a demo, as the last lines name them.
STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (the terminal closed) raised as Ctrl-C is, naming its signal."""

    def __init__(self, signum):
        super().__init__(STOP_SIGNALS[signum])
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def run_demo(main):
    """Runs a demo's ``main()`` so that SIGTERM and SIGHUP stop it as Ctrl-C
    does (:func:`run_arms`): its commands run in process groups of their own,
    which the terminal's signals do not reach. Stopped outside the runs (while
    preparing data), it says so and exits with 128 + the signal's number; a
    prepared data folder is used only once complete, so nothing half-made is
    taken up next time."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        main()
    except KeyboardInterrupt as interrupt:
        signum = getattr(interrupt, "signum", signal.SIGINT)
        log(f"stopped by {STOP_SIGNALS[signum]}; data folders are used only once complete, so the next start "
            "prepares again whatever was not")
        raise SystemExit(128 + signum) from None


def write_results(results, work, title):
    """``results.json`` and ``curves.png`` (every run's training and validation curves) in work."""
    (work / "results.json").write_text(json.dumps(results, indent=2))
    runs = results["runs"]
    plot({f"{name} seed {s['seed']}": curves(s["log"]) for name, arm in runs.items() for s in arm["seeds"]},
         work / "curves.png", title=title)
