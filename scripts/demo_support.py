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
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
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


# Commands running now, so that a failing run can stop the runs beside it.
_RUNNING = set()
_RUNNING_LOCK = threading.Lock()


def run_command(cmd, log_path, env=None, on_line=None):
    """Runs a command with its output appended to log_path, feeding each line to
    ``on_line``; on failure, stops with the log's last lines and its path."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail = deque(maxlen=30)
    # Line-buffered, so the log can be followed (tail -f) while the command runs.
    with open(log_path, "a", encoding="utf-8", buffering=1) as sink:
        sink.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        with subprocess.Popen(
            [str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            errors="replace",
        ) as proc:
            with _RUNNING_LOCK:
                _RUNNING.add(proc)
            try:
                for line in proc.stdout:
                    sink.write(line)
                    tail.append(line)
                    if on_line:
                        on_line(line)
            finally:
                with _RUNNING_LOCK:
                    _RUNNING.discard(proc)
    if proc.returncode != 0:
        raise SystemExit(
            f"{Path(str(cmd[0])).name} failed (exit status {proc.returncode}); the last lines of its log:\n"
            + "".join(tail) + f"full log: {log_path}"
        )


def stop_running_commands():
    with _RUNNING_LOCK:
        for proc in _RUNNING:
            proc.terminate()


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


def fairseq_train(args, run):
    """``fairseq-train ARGS --save-dir`` for a :class:`DemoRun`, with a progress bar
    and the full output in ``train.log`` in its folder, or the cached result of
    a finished run.

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
        run_command([tool("fairseq-train"), *args, "--save-dir", run.save_dir], log_file,
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


def add_demo_arguments(parser, setup, budgets, alpha, workdir):
    """The options every demo has: budget, seeds, alpha, setup overrides, threads, workdir."""
    parser.add_argument("--budget", choices=sorted(budgets), default=os.environ.get("RDROP_DEMO_BUDGET", "default"),
                        help="update budget (env RDROP_DEMO_BUDGET): default finishes in about 25 min on 2 cores")
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


def setup_tag(setup):
    """A short hash of a setup dict, naming the runs trained with it."""
    return hashlib.sha1(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:8]


class DemoRun:
    """One training of a demo: arm, alpha, seed, its budget (``max_update`` and
    validation interval) and where it goes; ``position`` is its progress bar's row."""

    def __init__(self, arm, alpha, seed, budget, save_dir, threads):
        self.arm, self.alpha, self.seed, self.budget = arm, alpha, seed, budget
        self.save_dir, self.threads, self.position = save_dir, threads, 0

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
    ``generate-{split}.txt`` in the run's folder and reused. Stops when any of
    the split's ``sentences`` has no hypothesis."""
    out = run.save_dir / f"generate-{split}.txt"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        log(f"{run.label}: generating {split}, log in {out}")
        run_command(
            [
                tool("fairseq-generate"), bin_dir, "--user-dir", USER_DIR, "--path", run.save_dir / "checkpoint_best.pt",
                "--gen-subset", split, "--cpu",
                # fairseq otherwise drops a last batch whose size is not a multiple of 8
                "--required-batch-size-multiple", 1, *options,
            ],
            tmp, env=thread_env(run.threads),
        )
        tmp.rename(out)
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


def start_demo(doc, setup, budgets, alpha, workdir, launcher, argv=None):
    """(args, budget, setup) of a demo's command line, with fairseq checked and
    the work folder created: the start every demo's main() shares."""
    parser = demo_parser(doc)
    add_demo_arguments(parser, setup, budgets, alpha=alpha, workdir=workdir)
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


def run_arms(args, budget, setup, train_and_score):
    """The results of a demo: for every arm and seed, the dict
    ``train_and_score(run)`` returns for a :class:`DemoRun`. Runs go ``--jobs`` at
    a time, longest first; a run's folder names its arm, alpha, seed, updates and
    a hash of the setup and budget, so finished runs are found again."""
    # What changes a run's training or its cached outputs besides the setup: the
    # validation (and checkpoint) interval and the beam.
    tag = setup_tag({**setup, "budget.interval": budget["interval"], "budget.beam": budget.get("beam")})
    results = {"budget": args.budget, "max_update": budget["max_update"], "setup": setup,
               "threads": args.threads, "jobs": args.jobs, "runs": {}}
    runs = []
    for name, alpha, updates in arms(args, budget):
        results["runs"][name] = {"alpha": alpha, "max_update": updates, "seeds": []}
        for seed in args.seeds:
            save_dir = args.workdir / f"{name}-alpha{alpha:g}-seed{seed}-{updates}-{tag}"
            runs.append(DemoRun(name, alpha, seed, dict(budget, max_update=updates), save_dir, args.threads))
    positions = queue.SimpleQueue()
    for position in range(args.jobs):
        positions.put(position)

    def one(run):
        run.position = positions.get()
        try:
            return train_and_score(run)
        finally:
            positions.put(run.position)

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {run: pool.submit(one, run) for run in sorted(runs, key=lambda r: -r.cost)}
        finished, pending = wait(futures.values(), return_when=FIRST_EXCEPTION)
        failed = [f for f in finished if f.exception() is not None]
        if failed:
            for future in pending:
                future.cancel()
            stop_running_commands()
            raise failed[0].exception()
    for run in runs:
        results["runs"][run.arm]["seeds"].append({"seed": run.seed, **futures[run].result()})
    return results


def write_results(results, work, title):
    """``results.json`` and ``curves.png`` (every run's training and validation curves) in work."""
    (work / "results.json").write_text(json.dumps(results, indent=2))
    runs = results["runs"]
    plot({f"{name} seed {s['seed']}": curves(s["log"]) for name, arm in runs.items() for s in arm["seeds"]},
         work / "curves.png", title=title)
