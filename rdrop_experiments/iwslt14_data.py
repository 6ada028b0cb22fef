"""IWSLT'14 German-English as fairseq's ``prepare-iwslt14.sh`` builds it.

The protocol (WIT3 2014-01 release, the R-Drop paper's IWSLT'14 De->En data):

* train: ``train.tags.de-en.{de,en}`` without the ``<url>``, ``<talkid>`` and
  ``<keywords>`` lines and with the ``<title>``/``<description>`` tags (not
  their text) removed; Moses-tokenized; pairs filtered like
  ``clean-corpus-n.perl -ratio 1.5 ... 1 175``; lowercased.
* valid: every 23rd line of that cleaned training text (train keeps the rest).
* test: the ``<seg>`` text of IWSLT14.TED.dev2010, IWSLT14.TEDX.dev2012 and
  IWSLT14.TED.tst2010/2011/2012, tokenized and lowercased, concatenated in
  that order: 887 + 1,165 + 1,565 + 1,433 + 1,700 = 6,750 pairs.
* joint BPE with 10,000 merges learned on train.de + train.en, applied to
  all splits.

Output layout (as the shell script's): ``OUT/tmp/{train,valid,test}.{de,en}``
(tokenized, before BPE), ``OUT/code`` and ``OUT/{train,valid,test}.{de,en}``.

    python prepare_iwslt14.py --out DIR                     # download first
    python prepare_iwslt14.py --out DIR --tgz de-en.tgz     # offline
    python prepare_iwslt14.py --out DIR --orig path/to/de-en
"""

import argparse
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator

from rdrop_experiments import mt_prep

from rdrop_experiments.errors import BadInput

URL = "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"
SRC, TGT = "de", "en"
TEST_SETS = (
    "IWSLT14.TED.dev2010",
    "IWSLT14.TEDX.dev2012",
    "IWSLT14.TED.tst2010",
    "IWSLT14.TED.tst2011",
    "IWSLT14.TED.tst2012",
)
VALID_EVERY = 23
BPE_MERGES = 10000
CLEAN = dict(min_len=1, max_len=175, ratio=1.5)

_DROPPED_LINES = ("<url>", "<talkid>", "<keywords>")
_REMOVED_TAGS = ("<title>", "</title>", "<description>", "</description>")


def strip_train_markup(lines: Iterable[str]) -> Iterator[str]:
    """The ``grep -v``/``sed`` edits applied to ``train.tags.de-en.*``.

    Other tag lines (``<speaker>``, ``<reviewer ...>``, ...) are kept and
    tokenized like text, as in the original recipe.
    """
    for line in lines:
        if any(tag in line for tag in _DROPPED_LINES):
            continue
        for tag in _REMOVED_TAGS:
            line = line.replace(tag, "")
        yield line


def download(url: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    print(f"downloading {url} -> {dest}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise BadInput(
            f"error: could not download {url} ({e}).\n"
            f"Without internet, fetch de-en.tgz elsewhere and pass --tgz PATH."
        )
    tmp.rename(dest)
    return dest


def unpack(tgz: Path, dest: Path) -> Path:
    if not tgz.is_file():
        raise BadInput(f"error: archive not found: {tgz}")
    dest.mkdir(parents=True, exist_ok=True)
    mt_prep.extract_tar(tgz, dest)
    return find_orig(dest)


def find_orig(path: Path) -> Path:
    """The folder holding ``train.tags.de-en.de`` (``path`` or ``path/de-en``)."""
    for candidate in (path, path / "de-en"):
        if (candidate / f"train.tags.de-en.{SRC}").is_file():
            return candidate
    raise BadInput(
        f"error: {path} does not contain train.tags.de-en.{SRC} "
        "(expected the extracted de-en folder of the WIT3 archive)"
    )


def _missing_inputs(orig: Path):
    needed = [f"train.tags.de-en.{l}" for l in (SRC, TGT)]
    needed += [f"{name}.de-en.{l}.xml" for name in TEST_SETS for l in (SRC, TGT)]
    return [orig / n for n in needed if not (orig / n).is_file()]


def prepare(orig: Path, out: Path, bpe_merges: int = BPE_MERGES, workers: int = 1) -> dict:
    """Runs every stage; returns the number of pairs per split."""
    missing = _missing_inputs(orig)
    if missing:
        raise BadInput("error: missing input files:\n  " + "\n  ".join(map(str, missing)))
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"prepare_iwslt14: {msg}", file=sys.stderr)

    log("tokenizing train")
    tok = {}
    for l in (SRC, TGT):
        text = strip_train_markup(mt_prep.read_lines(orig / f"train.tags.de-en.{l}"))
        tok[l] = list(mt_prep.tokenize_lines(text, l, workers=workers))
    # clean-corpus-n runs before lowercasing in the original recipe
    pairs = list(mt_prep.clean_pairs(tok[SRC], tok[TGT], **CLEAN))
    log(f"clean: {len(tok[SRC])} pairs in, {len(pairs)} kept")
    counts = {}
    for i, l in enumerate((SRC, TGT)):
        cleaned = [mt_prep.lowercase(p[i]) for p in pairs]
        train, valid = mt_prep.split_every(cleaned, VALID_EVERY)
        mt_prep.write_lines(tmp / f"train.{l}", train)
        mt_prep.write_lines(tmp / f"valid.{l}", valid)
        counts["train"], counts["valid"] = len(train), len(valid)

    log("tokenizing test sets")
    for l in (SRC, TGT):
        test = []
        for name in TEST_SETS:
            segs = mt_prep.extract_segments(mt_prep.read_lines(orig / f"{name}.de-en.{l}.xml"))
            test += mt_prep.tokenize_lines(segs, l, lower=True, workers=workers)
        mt_prep.write_lines(tmp / f"test.{l}", test)
        counts["test"] = len(test)

    log(f"learning {bpe_merges} joint BPE merges")
    mt_prep.learn_bpe([tmp / f"train.{SRC}", tmp / f"train.{TGT}"], out / "code", bpe_merges)
    for split in ("train", "valid", "test"):
        for l in (SRC, TGT):
            lines = mt_prep.read_lines(tmp / f"{split}.{l}")
            mt_prep.write_lines(out / f"{split}.{l}",
                                mt_prep.apply_bpe_lines(out / "code", lines, workers))
    log("pairs: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (text, before binarizing)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tgz", type=Path, help="an already downloaded de-en.tgz")
    src.add_argument("--orig", type=Path, help="an already extracted de-en folder")
    p.add_argument("--download-dir", type=Path, help="where to download/extract (default OUT/orig)")
    p.add_argument("--url", default=URL)
    p.add_argument("--bpe-merges", type=int, default=BPE_MERGES)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)

    work = args.download_dir or args.out / "orig"
    if args.orig:
        if not args.orig.is_dir():
            raise BadInput(f"error: --orig folder not found: {args.orig}")
        orig = find_orig(args.orig)
    elif args.tgz:
        orig = unpack(args.tgz, work)
    else:
        tgz = work / "de-en.tgz"
        if not tgz.is_file():
            download(args.url, tgz)
        orig = unpack(tgz, work)
    prepare(orig, args.out, args.bpe_merges, args.workers)
    return 0

