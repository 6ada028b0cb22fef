"""Turning shipped text into fairseq's binary data: sentencepiece, fairseq-preprocess, and a folder named by its inputs."""

import hashlib
import inspect
import json
import shutil

from rdrop_experiments.console import log
from rdrop_experiments.fairseq_tools import fairseq_script
from rdrop_experiments.processes import run_command
from rdrop_experiments.run_tags import content_hash


def data_folder_name(sources, parameters, code):
    """``data-<8 hex digits>`` naming prepared data by what makes it: the content
    of the ``sources`` (files or folders), the preparation ``parameters`` (a
    dict of JSON values) and the preparation ``code`` (functions or modules,
    by their source text). A change to any of them names a new folder."""
    digest = hashlib.sha1(json.dumps(parameters, sort_keys=True).encode())
    for source in sources:
        digest.update(b"\0" + content_hash(source).encode())
    for part in code:
        digest.update(b"\0" + inspect.getsource(part).encode())
    return f"data-{digest.hexdigest()[:8]}"


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


def binarize(options, bin_dir, workers):
    """``fairseq-preprocess OPTIONS`` into ``bin_dir``, which appears only once
    complete; the log is ``preprocess.log`` beside it."""
    tmp_bin = bin_dir.with_name(bin_dir.name + ".tmp")
    shutil.rmtree(tmp_bin, ignore_errors=True)
    log(f"binarizing into {bin_dir}, log in {bin_dir.parent / 'preprocess.log'}")
    run_command([fairseq_script("fairseq-preprocess"), *options, "--destdir", tmp_bin, "--workers", str(workers)],
                bin_dir.parent / "preprocess.log")
    tmp_bin.rename(bin_dir)


def binarize_pairs(prefixes, source, target, bin_dir):
    """fairseq-preprocess of sentence pairs with a joined dictionary into bin_dir.
    ``prefixes`` maps train/valid/test to file prefixes (a list for several test sets)."""
    tests = prefixes["test"] if isinstance(prefixes["test"], list) else [prefixes["test"]]
    binarize([
        "--source-lang", source, "--target-lang", target, "--joined-dictionary",
        "--trainpref", prefixes["train"], "--validpref", prefixes["valid"],
        "--testpref", ",".join(str(p) for p in tests),
    ], bin_dir, workers=2)
