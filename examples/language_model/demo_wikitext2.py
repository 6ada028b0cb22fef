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

from rdrop_experiments.data_prep import binarize, sentencepiece_encode
from rdrop_experiments.demo import Demo, main
from rdrop_experiments.errors import IncompleteOutput
from rdrop_experiments.fairseq_logs import curves
from rdrop_experiments.fairseq_tools import REPO, USER_DIR, fairseq_script, run_or_reuse, thread_env

FILES = {"train": "wiki.train.tokens.gz", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}
EVAL_SPLITS = ("valid", "test")


class WikiText2(Demo):
    name, title, launcher = "wikitext2", "WikiText-2 language model", "examples/language_model/run_demo.sh"
    data = REPO / "data" / "language_modeling" / "wikitext-2"
    alpha, default_minutes = 1.0, 15
    # Sized so that the baseline overfits its training slice within a 2-core
    # CPU's budget (R-Drop is a regularizer: it pays off where the baseline overfits).
    setup = {
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
    budgets = {
        "tiny": dict(max_update=20, interval=10,
                     setup=dict(train_lines=400, valid_lines=150, test_lines=150, vocab_size=300, decoder_layers=1,
                                embed_dim=32, ffn_dim=64, heads=2, warmup=5, tokens_per_sample=32, max_tokens=512,
                                context_window=16)),
        "default": dict(max_update=400, interval=50),
        "full": dict(max_update=800, interval=50),
    }
    compared = "perplexity"
    gain_scores = {"test perplexity": lambda s: s["eval"]["test"]["ppl"]}

    def read_lines(self, split, limit=None):
        path = self.data / FILES[split]
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
            lines = [line.rstrip("\n") for line in f]
        return lines[:limit] if limit else lines

    def data_parameters(self, setup, budget):
        return {key: setup[key] for key in ("train_lines", "valid_lines", "test_lines", "vocab_size")}

    def prepare_data(self, folder, setup, budget):
        """Sentencepiece on the training slice, then fairseq binarization of all splits."""
        raw, sp_dir = folder / "raw", folder / "spm"
        raw.mkdir(parents=True, exist_ok=True)
        for split in FILES:
            lines = self.read_lines(split, setup[f"{split}_lines"])
            # WikiText's blank separator lines carry no tokens; fairseq would only add an eos for each.
            (raw / f"{split}.txt").write_text("\n".join(l for l in lines if l.strip()) + "\n", encoding="utf-8")
        sentencepiece_encode(raw, sp_dir, FILES, ("txt",), setup["vocab_size"])
        bin_dir = folder / "data-bin"
        binarize(["--only-source", "--trainpref", sp_dir / "train.txt", "--validpref", sp_dir / "valid.txt",
                  "--testpref", sp_dir / "test.txt"], bin_dir, workers=1)
        return bin_dir

    def train_flags(self, setup, budget):
        return [
            "--task", "language_modeling",
            "--arch", "transformer_lm", "--share-decoder-input-output-embed",
            "--decoder-layers", setup["decoder_layers"],
            # transformer_lm's input and output dimensions default to 512, not to the embedding size
            "--decoder-embed-dim", setup["embed_dim"], "--decoder-input-dim", setup["embed_dim"],
            "--decoder-output-dim", setup["embed_dim"],
            "--decoder-ffn-embed-dim", setup["ffn_dim"], "--decoder-attention-heads", setup["heads"],
            "--dropout", setup["dropout"], "--attention-dropout", 0.1, "--label-smoothing", 0,
            "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--weight-decay", 0.01, "--clip-norm", 0.0,
            "--lr", setup["lr"], "--lr-scheduler", "inverse_sqrt", "--warmup-updates", setup["warmup"],
            "--warmup-init-lr", 1e-7,
            "--tokens-per-sample", setup["tokens_per_sample"], "--sample-break-mode", "none",
            "--max-tokens", setup["max_tokens"],
        ]

    def eval_lm(self, bin_dir, run, split, setup):
        """(loss in bits per token, perplexity) of ``fairseq-eval-lm`` with a context
        window, whose log is kept in the run's folder and reused by the same command."""
        log_file = run.save_dir / f"eval-lm-{split}.log"
        run_or_reuse(
            [
                fairseq_script("fairseq-eval-lm"), bin_dir, "--user-dir", USER_DIR,
                "--path", run.save_dir / "checkpoint_best.pt", "--gen-subset", split, "--cpu",
                "--tokens-per-sample", setup["tokens_per_sample"], "--context-window", setup["context_window"],
                "--batch-size", 16, "--num-workers", 0,
            ],
            log_file, env=thread_env(run.threads), announce=f"{run.label}: scoring {split}, log in {log_file}",
        )
        match = re.search(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)", log_file.read_text(encoding="utf-8"))
        if not match:
            raise IncompleteOutput(f"fairseq-eval-lm printed no loss and perplexity for {split}; see its log {log_file}")
        return float(match.group(1)), float(match.group(2))

    def score(self, bin_dir, run, setup, budget, log_file):
        """The best validation loss and its update, and the valid and test perplexity of checkpoint_best.pt."""
        valid = curves(log_file)["valid"]
        points = [(l, u) for l, u in zip(valid["loss"], valid["updates"]) if isinstance(l, float)]
        loss, update = min(points, default=(None, None))
        scores = {"best_valid_loss": loss, "best_update": update, "eval": {}}
        for split in EVAL_SPLITS:
            loss_bits, ppl = self.eval_lm(bin_dir, run, split, setup)
            scores["eval"][split] = {"loss_bits": round(loss_bits, 4), "ppl": round(ppl, 2)}
        return scores

    def columns(self):
        return [
            *((f"{split} ppl", lambda arm, value_of, split=split: f"{value_of(lambda s: s['eval'][split]['ppl']):.2f}")
              for split in EVAL_SPLITS),
            ("best update", lambda arm, value_of: f"{value_of(lambda s: s['best_update']):.0f}"),
        ]


if __name__ == "__main__":
    main(WikiText2())
