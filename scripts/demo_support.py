"""Plumbing shared by the CPU demos (examples/*/demo_*.py).

Each demo trains a baseline (``--rdrop-alpha 0``) and an R-Drop arm with the
same setup, seed and update budget; this module holds what they have in
common: finding fairseq's console scripts, running them with a log, caching
finished trainings, the command-line options and the results table.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from scripts.fairseq_logs import curves, plot

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
    print(f"[demo] {message}", flush=True)


def thread_env(threads):
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def run(cmd, log_path=None, env=None):
    """Runs a command, echoing its output (and appending it to log_path)."""
    log(" ".join(str(c) for c in cmd))
    with subprocess.Popen(
        [str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc, (open(log_path, "a") if log_path else open(os.devnull, "w")) as sink:
        tail = []
        for line in proc.stdout:
            sys.stdout.write(line)
            sink.write(line)
            tail = (tail + [line])[-40:]
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {cmd[0]}\n" + "".join(tail))


def fairseq_train(args, save_dir, threads):
    """``fairseq-train ARGS --save-dir SAVE_DIR``, or the cached result of a finished run.

    Returns (log file, training seconds). A run that did not finish is started
    again from scratch, so an interrupted demo never reports a partial run.
    """
    log_file = save_dir / "train.log"
    done = save_dir / "done"
    if done.exists():
        log(f"reusing finished run {save_dir}")
        return log_file, json.loads(done.read_text())["seconds"]
    shutil.rmtree(save_dir, ignore_errors=True)
    save_dir.mkdir(parents=True)
    start = time.time()
    run([tool("fairseq-train"), *args, "--save-dir", save_dir], log_path=log_file, env=thread_env(threads))
    seconds = time.time() - start
    done.write_text(json.dumps({"seconds": seconds}))
    return log_file, seconds


def add_demo_arguments(parser, setup, budgets, alpha, workdir):
    """The options every demo has: budget, seeds, alpha, setup overrides, threads, workdir."""
    parser.add_argument("--budget", choices=sorted(budgets), default=os.environ.get("RDROP_DEMO_BUDGET", "default"),
                        help="update budget (env RDROP_DEMO_BUDGET): default finishes in about 25 min on 2 cores")
    parser.add_argument("--full", action="store_const", const="full", dest="budget", help="same as --budget full")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds; each trains both arms")
    parser.add_argument("--alpha", type=float, default=alpha, help="--rdrop-alpha of the R-Drop arm")
    parser.add_argument("--max-update", type=int, help="override the budget's number of updates")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a setup value, e.g. --set dropout=0.2; keys: {', '.join(setup)}")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per fairseq process")
    parser.add_argument("--workdir", type=Path, default=workdir)


def resolve_setup(args, parser, setup, budgets):
    """(budget, setup) after the budget's own setup changes and the --set overrides."""
    budget = dict(budgets[args.budget])
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


def seed_groups(arm):
    """(label, seeds) for each seed of an arm, plus ("mean", all) when there are several."""
    groups = [(str(s["seed"]), [s]) for s in arm["seeds"]]
    if len(arm["seeds"]) > 1:
        groups.append(("mean", arm["seeds"]))
    return groups


def print_table(header, rows):
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))


def demo_parser(doc):
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def setup_tag(setup):
    """A short hash of a setup dict, naming the runs trained with it."""
    return hashlib.sha1(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:8]


def sentencepiece_encode(raw, sp_dir, splits, sides, vocab_size):
    """Trains one sentencepiece model on the training text of every side and
    writes each ``raw/{split}.{side}`` as pieces to ``sp_dir/{split}.{side}``."""
    import sentencepiece as spm

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
    run(
        [
            tool("fairseq-preprocess"), "--source-lang", source, "--target-lang", target, "--joined-dictionary",
            "--trainpref", prefixes["train"], "--validpref", prefixes["valid"],
            "--testpref", ",".join(str(p) for p in tests), "--destdir", tmp_bin, "--workers", "2",
        ]
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


def run_arms(args, budget, setup, train_and_score):
    """The results of a demo: for the baseline (alpha 0) and R-Drop (``--alpha``),
    one entry per seed from ``train_and_score(save_dir, alpha, seed)`` (a dict);
    ``save_dir`` names the arm, alpha, seed, updates and setup, so finished runs
    are found again."""
    tag = setup_tag(setup)
    results = {"budget": args.budget, "max_update": budget["max_update"], "setup": setup,
               "threads": args.threads, "runs": {}}
    for name, alpha in (("baseline", 0.0), ("rdrop", args.alpha)):
        arm = results["runs"][name] = {"alpha": alpha, "seeds": []}
        for seed in args.seeds:
            save_dir = args.workdir / f"{name}-alpha{alpha:g}-seed{seed}-{budget['max_update']}-{tag}"
            arm["seeds"].append({"seed": seed, **train_and_score(save_dir, alpha, seed)})
    return results


def rdrop_minus_baseline(results, score):
    """R-Drop's mean over seeds of ``score(seed entry)`` minus the baseline's, to 2 decimals."""
    arms = results["runs"]
    return round(mean(map(score, arms["rdrop"]["seeds"])) - mean(map(score, arms["baseline"]["seeds"])), 2)


def write_results(results, work, title):
    """``results.json`` and ``curves.png`` (every run's training and validation curves) in work."""
    (work / "results.json").write_text(json.dumps(results, indent=2))
    runs = results["runs"]
    plot({f"{name} seed {s['seed']}": curves(s["log"]) for name, arm in runs.items() for s in arm["seeds"]},
         work / "curves.png", title=title)
