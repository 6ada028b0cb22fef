"""Baseline vs R-Drop language models on WikiText-2, on a laptop CPU.

Trains a sentencepiece model on a slice of WikiText-2's training set, binarizes
with ``fairseq-preprocess --only-source``, then trains two small transformer
LMs with the same architecture, seed and number of updates: a baseline
(``--rdrop-alpha 0``) and R-Drop. Both use the criterion
``label_smoothed_cross_entropy_rdrop`` with ``--label-smoothing 0``, so the
only difference is the KL term. The best checkpoint of each (lowest validation
loss) is scored with ``fairseq-eval-lm --context-window`` on the validation
slice the runs were validated on (the first ``valid_lines`` lines of
wiki.valid.tokens) and on the test set (all of it unless ``test_lines`` is set).

Perplexities are per sentencepiece token of this demo's vocabulary: they
compare between the demo's runs, not with word-level WikiText-2 results.

Writes into ``--workdir``: ``results.json``, ``curves.png`` (training and
validation loss against updates for every run) and the fairseq logs and
checkpoints. A finished run is reused by the same command; Ctrl-C stops every
run at once and lists what was kept.

    python examples/language_model/demo_wikitext2.py                          # default budget
    python examples/language_model/demo_wikitext2.py --full --seeds 1 2       # the README's table
"""

import gzip
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from scripts.demo_support import (  # noqa: E402
    USER_DIR, describe_gain, fairseq_train, log, paired_gain, print_table as print_rows, run_arms, run_command,
    run_demo, run_once, seed_rows, sentencepiece_encode, start_demo, thread_env, tool, write_results,
)
from scripts.fairseq_logs import curves  # noqa: E402

DATA = REPO / "data" / "language_modeling" / "wikitext-2"
FILES = {"train": "wiki.train.tokens.gz", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}
EVAL_SPLITS = ("valid", "test")

# The demo's setup, sized so that the baseline overfits its training slice
# within a 2-core CPU's budget (R-Drop is a regularizer: it pays off where the
# baseline overfits).
SETUP = {
    "train_lines": 1000,  # first N lines of wiki.train.tokens
    "valid_lines": 500,  # first N lines of wiki.valid.tokens: validation and checkpoint choice
    "test_lines": 0,  # first N lines of wiki.test.tokens, 0 for all
    "vocab_size": 2000,  # sentencepiece unigram vocabulary
    "decoder_layers": 2,
    "embed_dim": 256,
    "ffn_dim": 1024,
    "heads": 4,
    "dropout": 0.3,
    "lr": 1e-3,
    "warmup": 200,
    "tokens_per_sample": 128,
    "max_tokens": 2048,
    "context_window": 64,  # fairseq-eval-lm: tokens of context kept for each scored block
}
# Budgets share the setup; they change the number of updates and the
# evaluation cadence. "tiny" exists for the end-to-end test.
BUDGETS = {
    "tiny": dict(max_update=20, interval=10,
                 setup=dict(train_lines=400, valid_lines=150, test_lines=150, vocab_size=300, decoder_layers=1, embed_dim=32, ffn_dim=64,
                            heads=2, warmup=5, tokens_per_sample=32, max_tokens=512, context_window=16)),
    "default": dict(max_update=400, interval=50),
    "full": dict(max_update=800, interval=50),
}


def read_lines(split, limit=None):
    path = DATA / FILES[split]
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
        lines = [line.rstrip("\n") for line in f]
    return lines[:limit] if limit else lines


def prepare_data(work, model):
    """Sentencepiece on the training slice, then fairseq binarization of all splits."""
    bin_dir = work / "data-bin"
    if (bin_dir / "dict.txt").exists():
        log(f"reusing {bin_dir}")
        return bin_dir
    raw, sp_dir = work / "raw", work / "spm"
    raw.mkdir(parents=True, exist_ok=True)
    for split in FILES:
        lines = read_lines(split, model[f"{split}_lines"])
        # WikiText's blank separator lines carry no tokens; fairseq would only add an eos for each.
        (raw / f"{split}.txt").write_text("\n".join(l for l in lines if l.strip()) + "\n", encoding="utf-8")
    sentencepiece_encode(raw, sp_dir, FILES, ("txt",), model["vocab_size"])
    tmp_bin = work / "data-bin.tmp"
    shutil.rmtree(tmp_bin, ignore_errors=True)
    log(f"binarizing into {bin_dir}, log in {work / 'preprocess.log'}")
    run_command([
        tool("fairseq-preprocess"), "--only-source", "--trainpref", sp_dir / "train.txt",
        "--validpref", sp_dir / "valid.txt", "--testpref", sp_dir / "test.txt", "--destdir", tmp_bin,
        "--workers", "1",
    ], work / "preprocess.log")
    tmp_bin.rename(bin_dir)
    return bin_dir


def train_args(bin_dir, run, model):
    budget = run.budget
    return [
        bin_dir, "--user-dir", USER_DIR, "--task", "language_modeling", "--cpu", "--seed", run.seed,
        "--arch", "transformer_lm", "--share-decoder-input-output-embed",
        "--decoder-layers", model["decoder_layers"],
        # transformer_lm's input and output dimensions default to 512, not to the embedding size
        "--decoder-embed-dim", model["embed_dim"], "--decoder-input-dim", model["embed_dim"],
        "--decoder-output-dim", model["embed_dim"],
        "--decoder-ffn-embed-dim", model["ffn_dim"], "--decoder-attention-heads", model["heads"],
        "--dropout", model["dropout"], "--attention-dropout", 0.1,
        "--criterion", "label_smoothed_cross_entropy_rdrop", "--rdrop-alpha", run.alpha, "--label-smoothing", 0,
        "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--weight-decay", 0.01, "--clip-norm", 0.0,
        "--lr", model["lr"], "--lr-scheduler", "inverse_sqrt", "--warmup-updates", model["warmup"],
        "--warmup-init-lr", 1e-7,
        "--tokens-per-sample", model["tokens_per_sample"], "--sample-break-mode", "none",
        "--max-tokens", model["max_tokens"], "--max-update", budget["max_update"],
        "--validate-interval", 100000, "--validate-interval-updates", budget["interval"],
        "--save-interval", 100000, "--save-interval-updates", budget["interval"],
        "--keep-interval-updates", 1, "--no-epoch-checkpoints",
        "--log-format", "json", "--log-interval", 25, "--num-workers", 0,
    ]


def eval_lm(bin_dir, run, split, model):
    """(loss in bits per token, perplexity) of ``fairseq-eval-lm`` with a context
    window, whose log is kept in the run's folder and reused by the same command."""
    log_file = run.save_dir / f"eval-lm-{split}.log"
    run_once(
        [
            tool("fairseq-eval-lm"), bin_dir, "--user-dir", USER_DIR, "--path", run.save_dir / "checkpoint_best.pt",
            "--gen-subset", split, "--cpu", "--tokens-per-sample", model["tokens_per_sample"],
            "--context-window", model["context_window"], "--batch-size", 16, "--num-workers", 0,
        ],
        log_file, env=thread_env(run.threads), announce=f"{run.label}: scoring {split}, log in {log_file}",
    )
    match = re.search(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)", log_file.read_text(encoding="utf-8"))
    if not match:
        raise SystemExit(f"fairseq-eval-lm printed no loss and perplexity for {split}; see its log {log_file}")
    return float(match.group(1)), float(match.group(2))


def evaluate(bin_dir, run, model):
    """Valid and test perplexity of checkpoint_best.pt."""
    scores = {}
    for split in EVAL_SPLITS:
        loss, ppl = eval_lm(bin_dir, run, split, model)
        scores[split] = {"loss_bits": round(loss, 4), "ppl": round(ppl, 2)}
    return scores


def best_valid(log_file):
    valid = curves(log_file)["valid"]
    points = [(l, u) for l, u in zip(valid["loss"], valid["updates"]) if isinstance(l, float)]
    loss, update = min(points, default=(None, None))
    return {"best_valid_loss": loss, "best_update": update}


def print_table(results):
    """One row per run and seed, then the mean and standard deviation over seeds."""
    header = ["run", "alpha", "seed", "valid ppl", "test ppl", "best update", "train min"]
    rows = [
        [name, f"{arm['alpha']:g}", label]
        + [f"{figure(lambda s: s['eval'][split]['ppl']):.2f}" for split in EVAL_SPLITS]
        + [f"{figure(lambda s: s['best_update']):.0f}", f"{figure(lambda s: s['train_seconds']) / 60:.1f}"]
        for name, arm in results["runs"].items()
        for label, figure in seed_rows(arm)
    ]
    print_rows(header, rows)
    print(f"R-Drop - baseline, test perplexity, paired by seed: {describe_gain(results['delta_test_ppl'])}")


def main(argv=None):
    args, budget, model = start_demo(__doc__, SETUP, BUDGETS, alpha=1.0, workdir=REPO / "runs" / "wikitext2-demo",
                                     launcher="examples/language_model/run_demo.sh", default_minutes=15, argv=argv)
    work = args.workdir
    data_key = "data-" + "-".join(str(model[k]) for k in ("train_lines", "valid_lines", "test_lines", "vocab_size"))
    bin_dir = prepare_data(work / data_key, model)

    def train_and_score(run):
        log_file, seconds = fairseq_train(run)
        return {"train_seconds": round(seconds, 1), "log": str(log_file), **best_valid(log_file),
                "eval": evaluate(bin_dir, run, model)}

    results = run_arms(args, budget, model, lambda run: train_args(bin_dir, run, model), train_and_score)
    results["delta_test_ppl"] = paired_gain(results, lambda s: s["eval"]["test"]["ppl"])
    write_results(results, work, title=f"WikiText-2 language model, {budget['max_update']} updates")
    print()
    print_table(results)
    log(f"wrote {work / 'results.json'} and {work / 'curves.png'}")


if __name__ == "__main__":
    run_demo(main)
