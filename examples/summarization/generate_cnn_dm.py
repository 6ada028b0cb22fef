"""Summarizes CNN/DailyMail test articles with a fine-tuned BART checkpoint.

Uses fairseq's BART hub interface (``BARTModel.from_pretrained`` and
``bart.sample``) with BART's CNN/DailyMail inference settings: beam 4, length
penalty 2.0, max_len_b 140, min_len 55, no_repeat_ngram_size 3, 32 articles per
batch, in half precision on GPU (``bart.half()``, as the official R-Drop and BART
inference code; ``--no-fp16`` for float32). One summary per line of ``--source``
goes to ``--out``. Importing the plugin first lets
``torch.load`` read checkpoints trained with ``label_smoothed_cross_entropy_rdrop``.

    python examples/summarization/generate_cnn_dm.py \\
        --checkpoint runs/checkpoints/cnn_dm_bart_large_alpha0.7_seed1/checkpoint_best.pt \\
        --data runs/data-bin/cnn_dm --source runs/data-bin/cnn_dm/test.source --out test.hypo
"""

import argparse
import sys
from pathlib import Path

import rdrop_fairseq  # noqa: F401  (allow-lists fairseq checkpoint types, registers the criteria)

USER_DIR = Path(rdrop_fairseq.__file__).parent
# BART's CNN/DailyMail settings (fairseq examples/bart, used by the R-Drop paper).
CNN_DM = dict(beam=4, lenpen=2.0, max_len_b=140, min_len=55, no_repeat_ngram_size=3)
# The official inference: 32 articles per bart.sample call, bart.half() on GPU.
BATCH_SIZE, FP16 = 32, True


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned checkpoint (.pt)")
    parser.add_argument("--data", type=Path, required=True, help="binarized data folder with dict.source.txt")
    parser.add_argument("--source", type=Path, required=True, help="articles, one per line")
    parser.add_argument("--out", type=Path, required=True, help="summaries, one per line")
    parser.add_argument("--gpt2-bpe", type=Path,
                        help="folder with GPT-2's encoder.json and vocab.bpe (default: fairseq downloads them)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=FP16,
                        help="half precision on GPU, as the official inference (default); --no-fp16: float32")
    for name, value in CNN_DM.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value,
                            help=f"default {value} (BART's CNN/DailyMail setting)")
    args = parser.parse_args(argv)
    for path, what in ((args.checkpoint, "checkpoint"), (args.source, "source file"),
                       (args.data / "dict.source.txt", "dictionary")):
        if not path.is_file():
            parser.error(f"{what} not found: {path}")
    if args.gpt2_bpe and not (args.gpt2_bpe / "encoder.json").is_file():
        parser.error(f"--gpt2-bpe: {args.gpt2_bpe / 'encoder.json'} not found")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch
    from fairseq.models.bart import BARTModel

    overrides = {"user_dir": str(USER_DIR)}
    if args.gpt2_bpe:
        overrides.update(gpt2_encoder_json=str(args.gpt2_bpe / "encoder.json"),
                         gpt2_vocab_bpe=str(args.gpt2_bpe / "vocab.bpe"))
    bart = BARTModel.from_pretrained(str(args.checkpoint.parent), checkpoint_file=args.checkpoint.name,
                                     data_name_or_path=str(args.data.resolve()), **overrides)
    bart.eval()
    if torch.cuda.is_available():
        bart.cuda()
        if args.fp16:
            bart.half()
    elif args.fp16:
        print("generate_cnn_dm.py: no CUDA device, summarizing in float32 on CPU", file=sys.stderr)
    settings = {name: getattr(args, name) for name in CNN_DM}
    articles = args.source.read_text(encoding="utf-8").splitlines()
    with open(args.out, "w", encoding="utf-8") as out:
        for start in range(0, len(articles), args.batch_size):
            batch = articles[start:start + args.batch_size]
            with torch.no_grad():
                summaries = bart.sample(batch, **settings)
            for summary in summaries:
                out.write(" ".join(summary.split()) + "\n")
            print(f"{start + len(batch)}/{len(articles)} articles", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
