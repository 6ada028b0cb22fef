"""Baseline vs R-Drop on Multi30k English->German, on a laptop CPU.

Trains a sentencepiece model, binarizes, then trains two transformers with the
same architecture, seed and update budget: a baseline (``--rdrop-alpha 0``) and
R-Drop. Both use the criterion ``label_smoothed_cross_entropy_rdrop``, so the
only difference is the KL term. The ``full`` budget adds a third arm, the
baseline with twice the updates (about R-Drop's compute). Each run keeps the
checkpoint with the best validation BLEU, which is evaluated with beam search
and sacreBLEU on test_2016_flickr, test_2017_flickr and test_2017_mscoco.

Runs go two at a time, one progress bar each; fairseq's own output goes to a
log file in each run's folder. Writes into ``--workdir``: ``results.json``,
``curves.png`` (training and validation curves of every run) and the logs and
checkpoints. A finished run is reused by the same command; Ctrl-C stops every
run at once and lists what was kept.

    python examples/translation/demo_multi30k.py          # default budget, seed 1
    python examples/translation/demo_multi30k.py --full   # the README's table: 3 seeds, 3 arms
"""

import gzip
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from scripts.demo_support import (  # noqa: E402
    USER_DIR, binarize_pairs, describe_gain, fairseq_train, generate, log, paired_gain, print_table as print_rows,
    run_arms, run_demo, seed_rows, sentencepiece_encode, start_demo, transformer_args, write_results,
)
from scripts.fairseq_logs import curves  # noqa: E402

DATA = REPO / "data" / "translation" / "multi30k"
SRC, TGT = "en", "de"
# fairseq split name -> Multi30k file stem
SPLITS = {
    "train": "train",
    "valid": "val",
    "test": "test_2016_flickr",
    "test1": "test_2017_flickr",
    "test2": "test_2017_mscoco",
}
TEST_SPLITS = ("test", "test1", "test2")

# The demo's setup, chosen on the validation set (examples/translation/README.md):
# a small model on 2,000 pairs with light dropout, so that the baseline
# overfits within a 2-core CPU's budget (R-Drop is a regularizer: it pays off
# where the baseline overfits).
SETUP = {
    "train_subset": 2000,  # first N training pairs
    "vocab_size": 4000,  # joint sentencepiece vocabulary
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
# Budgets share the setup. "full" trains three seeds and adds the baseline
# given twice the updates, about R-Drop's compute; "tiny" exists for the tests.
BUDGETS = {
    "tiny": dict(max_update=30, interval=15, eval_subset=100, beam=2, compute_matched=True,
                 setup=dict(train_subset=2000, vocab_size=1000, encoder_layers=1, decoder_layers=1,
                            embed_dim=32, ffn_dim=64, heads=2, dropout=0.3, lr=1e-3, warmup=10)),
    "default": dict(max_update=1000, interval=100),
    "full": dict(max_update=1000, interval=100, seeds=(1, 2, 3), compute_matched=True),
}


def read_lines(stem, lang, limit=None):
    with gzip.open(DATA / f"{stem}.{lang}.gz", "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    return lines[:limit] if limit else lines


def prepare_data(work, vocab_size, train_subset, eval_subset):
    """Sentencepiece (joint en+de) and fairseq binarization with a joined dictionary."""
    bin_dir = work / "data-bin"
    if (bin_dir / "dict.de.txt").exists():
        log(f"reusing {bin_dir}")
        return bin_dir
    raw, sp_dir = work / "raw", work / "spm"
    raw.mkdir(parents=True, exist_ok=True)
    for split, stem in SPLITS.items():
        limit = train_subset if split == "train" else (eval_subset if split != "valid" else None)
        for lang in (SRC, TGT):
            (raw / f"{split}.{lang}").write_text("\n".join(read_lines(stem, lang, limit)) + "\n", encoding="utf-8")
    sentencepiece_encode(raw, sp_dir, SPLITS, (SRC, TGT), vocab_size)
    binarize_pairs(
        {"train": sp_dir / "train", "valid": sp_dir / "valid", "test": [sp_dir / s for s in TEST_SPLITS]},
        SRC, TGT, bin_dir,
    )
    return bin_dir


def train_args(bin_dir, run, model):
    budget = run.budget
    return [
        bin_dir, "--user-dir", USER_DIR, "--task", "translation",
        "--source-lang", SRC, "--target-lang", TGT, "--cpu", "--seed", run.seed,
        *transformer_args(model),
        "--criterion", "label_smoothed_cross_entropy_rdrop", "--rdrop-alpha", run.alpha,
        "--max-update", budget["max_update"],
        "--validate-interval", 100000, "--validate-interval-updates", budget["interval"],
        "--save-interval", 100000, "--save-interval-updates", budget["interval"],
        "--keep-interval-updates", 1, "--no-epoch-checkpoints",
        "--eval-bleu", "--eval-bleu-args", '{"beam": 1, "max_len_a": 1.2, "max_len_b": 10}',
        "--eval-bleu-remove-bpe", "sentencepiece", "--eval-bleu-detok", "space",
        "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
        "--log-format", "json", "--log-interval", 25, "--num-workers", 0,
    ]


def evaluate(bin_dir, run, work, beam):
    """sacreBLEU of beam search from checkpoint_best.pt on each test split."""
    from sacrebleu.metrics import BLEU

    scores = {}
    for split in TEST_SPLITS:
        refs = (work / "raw" / f"{split}.{TGT}").read_text(encoding="utf-8").splitlines()
        hyps = generate(
            bin_dir, run, split,
            ["--beam", beam, "--batch-size", 128, "--remove-bpe", "sentencepiece", "--max-len-a", 1.2, "--max-len-b", 10],
            sentences=len(refs),
        )
        metric = BLEU()
        bleu = metric.corpus_score([hyps[i] for i in range(len(refs))], [refs])
        scores[SPLITS[split]] = {
            "bleu": round(bleu.score, 2),
            "signature": str(metric.get_signature()),
            "sentences": len(refs),
        }
    return scores


def best_valid(log_file):
    valid = curves(log_file)["valid"]
    return {
        "best_valid_bleu": max((b for b in valid["bleu"] if isinstance(b, float)), default=None),
        "best_valid_loss": min((l for l in valid["loss"] if isinstance(l, float)), default=None),
    }


def print_table(results):
    """One row per run and seed, then the mean and standard deviation over seeds."""
    arms = results["runs"]
    tests = list(SPLITS[t] for t in TEST_SPLITS)
    header = ["run", "alpha", "updates", "seed"] + [f"{t} BLEU" for t in tests] + ["best valid BLEU", "train min"]
    rows = [
        [name, f"{arm['alpha']:g}", str(arm["max_update"]), label]
        + [f"{figure(lambda s: s['test'][t]['bleu']):.2f}" for t in tests]
        + [f"{figure(lambda s: s['best_valid_bleu']):.2f}", f"{figure(lambda s: s['train_seconds']) / 60:.1f}"]
        for name, arm in arms.items()
        for label, figure in seed_rows(arm)
    ]
    print_rows(header, rows)
    for comparison, gains in results["gains"].items():
        print(f"{comparison}, sacreBLEU, paired by seed:")
        for test, gain in gains.items():
            print(f"  {test}: {describe_gain(gain)}")


def main(argv=None):
    args, budget, model = start_demo(__doc__, SETUP, BUDGETS, alpha=5.0, workdir=REPO / "runs" / "multi30k-demo",
                                     launcher="examples/translation/run_demo.sh", default_minutes=14, argv=argv)
    work = args.workdir
    data_key = f"data-{model['train_subset']}-{model['vocab_size']}-{budget.get('eval_subset', 'all')}"
    bin_dir = prepare_data(work / data_key, model["vocab_size"], model["train_subset"], budget.get("eval_subset"))

    def train_and_score(run):
        log_file, seconds = fairseq_train(run)
        return {"train_seconds": round(seconds, 1), "log": str(log_file), **best_valid(log_file),
                "test": evaluate(bin_dir, run, bin_dir.parent, budget.get("beam", 5))}

    results = run_arms(args, budget, model, lambda run: train_args(bin_dir, run, model), train_and_score)
    results["gains"] = {
        f"rdrop - {baseline}": {
            SPLITS[t]: paired_gain(results, lambda s, t=SPLITS[t]: s["test"][t]["bleu"], baseline=baseline)
            for t in TEST_SPLITS
        }
        for baseline in results["runs"] if baseline.startswith("baseline")
    }
    write_results(results, work, title=f"Multi30k en-de, {budget['max_update']} updates")
    print()
    print_table(results)
    log(f"wrote {work / 'results.json'} and {work / 'curves.png'}")


if __name__ == "__main__":
    run_demo(main)
