"""Baseline vs R-Drop sentence classification on CLINC150, on a laptop CPU.

CLINC150: short queries to a dialogue system, each labelled with one of 150
intents. The demo trains a sentencepiece model on the training queries,
binarizes queries and labels as fairseq's ``sentence_prediction`` task reads
them, then trains two small RoBERTa-style encoders from scratch with the same
architecture, seed and number of updates: a baseline (``--rdrop-alpha 0``) and
R-Drop. Both use the criterion ``sentence_prediction_rdrop``, so the only
difference is the KL term between the two passes' class distributions. Each
run keeps its checkpoint of best validation accuracy (fairseq chooses it by the
validation set alone); the test set, scored at each validation, gives that
checkpoint's test accuracy.

Writes into ``--workdir``: ``results.json``, ``curves.png`` (training and
validation curves of every run) and the fairseq logs and checkpoints. A
finished run is reused by the same command; Ctrl-C stops every run at once and
lists what was kept.

    python examples/sentence_prediction/demo_clinc150.py          # default budget, seed 1
    python examples/sentence_prediction/demo_clinc150.py --full   # the README's table: 3 seeds
"""

import gzip
import json
import shutil
from collections import defaultdict

from rdrop_experiments.data_prep import binarize, sentencepiece_encode
from rdrop_experiments.demo import Demo, main
from rdrop_experiments.errors import IncompleteOutput
from rdrop_experiments.fairseq_logs import curves, read_records
from rdrop_experiments.fairseq_tools import REPO

# fairseq split name -> CLINC150 key
SPLITS = {"train": "train", "valid": "val", "test": "test"}


class Clinc150(Demo):
    name, title, launcher = "clinc150", "CLINC150 intents", "examples/sentence_prediction/run_demo.sh"
    data = REPO / "data" / "classification" / "clinc150"
    criterion = "sentence_prediction_rdrop"
    alpha, default_minutes = 1.0, 6
    # Chosen on the validation set with seed 1 (examples/sentence_prediction/README.md):
    # 30 queries per intent, so that the baseline overfits within a 2-core CPU's
    # budget, and a d=256 encoder with dropout 0.3, where R-Drop's validation gain
    # was largest of the setups tried.
    setup = {
        "train_per_intent": 30,  # first N training queries of each intent (of 100)
        "vocab_size": 2000,  # sentencepiece unigram vocabulary
        "layers": 2,
        "embed_dim": 256,
        "ffn_dim": 1024,
        "heads": 4,
        "dropout": 0.3,
        "lr": 1e-3,
        "warmup": 200,
        "batch_size": 32,
    }
    budgets = {
        "tiny": dict(max_update=30, interval=15,
                     setup=dict(train_per_intent=4, vocab_size=400, layers=1, embed_dim=32, ffn_dim=64, heads=2,
                                dropout=0.1, warmup=5)),
        "default": dict(max_update=1500, interval=150),
        "full": dict(max_update=1500, interval=150, seeds=(1, 2, 3)),
    }
    compared = "accuracy (%)"
    gain_scores = {"test accuracy": lambda s: s["test_accuracy"]}

    def examples(self):
        with gzip.open(self.data / "data_full.json.gz", "rt", encoding="utf-8") as f:
            return json.load(f)

    def data_parameters(self, setup, budget):
        return {"train_per_intent": setup["train_per_intent"], "vocab_size": setup["vocab_size"]}

    def prepare_data(self, folder, setup, budget):
        """Queries as sentencepiece pieces and labels, binarized into data-bin/input0
        and data-bin/label with fairseq-preprocess --only-source."""
        raw, sp_dir = folder / "raw", folder / "spm"
        raw.mkdir(parents=True, exist_ok=True)
        examples = self.examples()
        for split, key in SPLITS.items():
            pairs = examples[key]
            if split == "train":
                kept, seen = [], defaultdict(int)
                for text, intent in pairs:
                    seen[intent] += 1
                    if seen[intent] <= setup["train_per_intent"]:
                        kept.append((text, intent))
                pairs = kept
            (raw / f"{split}.input0").write_text("\n".join(text for text, _ in pairs) + "\n", encoding="utf-8")
            (raw / f"{split}.label").write_text("\n".join(intent for _, intent in pairs) + "\n", encoding="utf-8")
        sentencepiece_encode(raw, sp_dir, SPLITS, ("input0",), setup["vocab_size"])
        staged, bin_dir = folder / "data-bin.tmp", folder / "data-bin"
        shutil.rmtree(staged, ignore_errors=True)
        for name, files in (("input0", sp_dir), ("label", raw)):
            binarize(["--only-source", "--trainpref", files / f"train.{name}", "--validpref", files / f"valid.{name}",
                      "--testpref", files / f"test.{name}"], staged / name, workers=1)
        staged.rename(bin_dir)
        return bin_dir

    def train_flags(self, setup, budget):
        return [
            "--task", "sentence_prediction", "--num-classes", 150, "--init-token", 0, "--max-positions", 64,
            "--shorten-method", "truncate",
            "--arch", "roberta", "--encoder-layers", setup["layers"], "--encoder-embed-dim", setup["embed_dim"],
            "--encoder-ffn-embed-dim", setup["ffn_dim"], "--encoder-attention-heads", setup["heads"],
            "--dropout", setup["dropout"], "--attention-dropout", 0.1,
            "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--weight-decay", 0.01, "--clip-norm", 0.0,
            "--lr", setup["lr"], "--lr-scheduler", "inverse_sqrt", "--warmup-updates", setup["warmup"],
            "--warmup-init-lr", 1e-7, "--batch-size", setup["batch_size"], "--required-batch-size-multiple", 1,
            "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric",
            # fairseq chooses the best checkpoint by the first subset alone; the test
            # set is scored at every validation, so the best checkpoint's is at hand
            "--valid-subset", "valid,test",
        ]

    def score(self, bin_dir, run, setup, budget, log_file):
        """The best validation accuracy and loss, and the test accuracy of the
        checkpoint fairseq kept as best: at the last validation with the best
        accuracy (fairseq replaces checkpoint_best.pt on a tie)."""
        valid = [r for r in read_records(log_file, "valid") if isinstance(r.get("valid_accuracy"), float)]
        test = {r["test_num_updates"]: r["test_accuracy"] for r in read_records(log_file, "test")
                if isinstance(r.get("test_accuracy"), float)}
        if not valid:
            raise IncompleteOutput(f"fairseq-train logged no validation accuracy; see its log {log_file}")
        best = max(r["valid_accuracy"] for r in valid)
        chosen = [r["valid_num_updates"] for r in valid if r["valid_accuracy"] == best][-1]
        if chosen not in test:
            raise IncompleteOutput(f"fairseq-train logged no test accuracy at update {chosen:g}; see its log {log_file}")
        return {
            "best_valid_accuracy": best,
            "best_update": chosen,
            "best_valid_loss": min((l for l in curves(log_file)["valid"]["loss"] if isinstance(l, float)), default=None),
            "test_accuracy": test[chosen],
        }

    def columns(self):
        return [
            ("test accuracy", lambda arm, value_of: f"{value_of(lambda s: s['test_accuracy']):.2f}"),
            ("best valid accuracy", lambda arm, value_of: f"{value_of(lambda s: s['best_valid_accuracy']):.2f}"),
            ("best valid loss", lambda arm, value_of: f"{value_of(lambda s: s['best_valid_loss']):.3f}"),
        ]


if __name__ == "__main__":
    main(Clinc150())
