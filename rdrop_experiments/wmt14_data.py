"""WMT'14 English-German as fairseq's ``prepare-wmt14en2de.sh --scaling18``
built it (fairseq pull request 203, the preparation the R-Drop authors
pointed WMT users to through fairseq issue 202), and English-French as
fairseq's ``prepare-wmt14en2fr.sh`` builds it.

Both pairs:

* train: the parallel corpora listed in ``PROTOCOLS``, each line through
  ``normalize-punctuation.perl -l L | remove-non-printing-char.perl |
  tokenizer.perl -a -l L`` (``-a``: hyphens become ``@-@``, so compounds are
  split in the data itself); no lowercasing.
* test: newstest2014 from ``test-full.tgz`` (3,003 segments), ``<seg>`` text
  with right single quotes turned into apostrophes, tokenized with ``-a``, not
  filtered. The untokenized reference is also written (``test.raw.L``), as
  sacreBLEU reads it, for detokenized BLEU.

en-de (``--scaling18``): corpora Europarl v7, Common Crawl and WMT'17's News
Commentary v12; train filtered by ``clean-corpus-n.perl ... 1 80`` (default
ratio 9) on the tokenized text, *before* BPE; valid is newstest2013 from
WMT'17's ``dev.tgz`` (``dev/newstest2013.L``, normalized and tokenized like
train); joint BPE with 32,764 merges learned on the filtered train.en +
train.de; nothing is filtered after BPE.

en-fr: corpora Europarl v7, Common Crawl, UN, News Commentary v9 and the 10^9
French-English corpus; valid is every 1,333rd tokenized training line (train
keeps the rest); joint BPE with 40,000 merges, then ``clean-corpus-n.perl
-ratio 1.5 ... 1 250`` on the BPE'd train and valid.

Output: ``OUT/{train,valid,test}.{en,L}``, ``OUT/code``, ``OUT/test.raw.{en,L}``;
intermediate files in ``OUT/tmp``.
"""

import argparse
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from rdrop_experiments import mt_prep

from rdrop_experiments.errors import BadInput

STATMT = "http://statmt.org"
ARCHIVES = {
    "europarl": f"{STATMT}/wmt13/training-parallel-europarl-v7.tgz",
    "commoncrawl": f"{STATMT}/wmt13/training-parallel-commoncrawl.tgz",
    "nc-v9": f"{STATMT}/wmt14/training-parallel-nc-v9.tgz",
    "nc-v12": "http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",
    "un": f"{STATMT}/wmt13/training-parallel-un.tgz",
    "giga": f"{STATMT}/wmt10/training-giga-fren.tar",
    "dev": "http://data.statmt.org/wmt17/translation-task/dev.tgz",
    "test": f"{STATMT}/wmt14/test-full.tgz",
}
# corpora: (archive, corpus prefix inside the extracted archives; files are PREFIX.LANG[.gz]).
# valid: "newstest2013" or the every-N-th training line held out. clean: the
# clean-corpus-n.perl arguments, applied to train before or after BPE.
PROTOCOLS = {
    "en-de": dict(
        corpora=[("europarl", "training/europarl-v7.de-en"), ("commoncrawl", "commoncrawl.de-en"),
                 ("nc-v12", "training/news-commentary-v12.de-en")],
        valid="newstest2013", bpe_merges=32764,
        clean=dict(min_len=1, max_len=80, ratio=9.0), clean_before_bpe=True),
    "en-fr": dict(
        corpora=[("europarl", "training/europarl-v7.fr-en"), ("commoncrawl", "commoncrawl.fr-en"),
                 ("un", "un/undoc.2000.fr-en"), ("nc-v9", "training/news-commentary-v9.fr-en"),
                 ("giga", "giga-fren.release2.fixed")],
        valid=1333, bpe_merges=40000,
        clean=dict(min_len=1, max_len=250, ratio=1.5), clean_before_bpe=False),
}
TEST_SGM = {"en-de": "test-full/newstest2014-deen-{kind}.{lang}.sgm",
            "en-fr": "test-full/newstest2014-fren-{kind}.{lang}.sgm"}


def needed_archives(pair: str):
    protocol = PROTOCOLS[pair]
    names = [a for a, _ in protocol["corpora"]] + ["test"]
    return names + (["dev"] if protocol["valid"] == "newstest2013" else [])


def corpus_file(orig: Path, prefix: str, lang: str) -> Path:
    plain = orig / f"{prefix}.{lang}"
    return plain if plain.exists() else orig / f"{prefix}.{lang}.gz"


def _unpacked(orig: Path, name: str, pair: str) -> bool:
    """Whether the files this archive provides are already in ``orig``."""
    src, tgt = pair.split("-")
    if name == "test":
        return (orig / TEST_SGM[pair].format(kind="src", lang=src)).exists()
    if name == "dev":
        return (orig / "dev" / f"newstest2013.{src}").exists()
    prefix = dict(PROTOCOLS[pair]["corpora"])[name]
    return corpus_file(orig, prefix, src).exists()


def fetch(orig: Path, pair: str, download: bool) -> None:
    """Downloads and unpacks into ``orig`` each archive whose files are missing."""
    orig.mkdir(parents=True, exist_ok=True)
    for name in needed_archives(pair):
        if _unpacked(orig, name, pair):
            continue
        url = ARCHIVES[name]
        archive = orig / url.rsplit("/", 1)[1]
        if not archive.exists():
            if not download:
                raise BadInput(f"error: {archive} is missing (and --no-download was given); "
                                 f"get it from {url}")
            print(f"downloading {url}", file=sys.stderr)
            part = archive.with_name(archive.name + ".part")
            try:
                with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
                    shutil.copyfileobj(r, f)
            except (urllib.error.URLError, OSError) as e:
                part.unlink(missing_ok=True)
                raise BadInput(f"error: could not download {url} ({e}); without internet, "
                                 f"place the archives in {orig} and pass --no-download")
            part.rename(archive)
        mt_prep.extract_tar(archive, orig)


def _tokenize_file(paths, out: Path, lang: str, normalize: bool, workers: int) -> int:
    def lines():
        for p in paths:
            yield from mt_prep.read_lines(p)

    return mt_prep.write_lines(
        out, mt_prep.tokenize_lines(lines(), lang, aggressive=True, normalize=normalize,
                                    workers=workers))


def _sgm_tokenized(path: Path, out: Path, lang: str, workers: int) -> int:
    segs = mt_prep.extract_segments(mt_prep.read_lines(path))
    return mt_prep.write_lines(out, mt_prep.tokenize_lines(segs, lang, aggressive=True,
                                                           workers=workers))


def prepare(orig: Path, out: Path, pair: str, bpe_merges: int = None, workers: int = 1) -> None:
    src, tgt = pair.split("-")
    protocol = PROTOCOLS[pair]
    bpe_merges = bpe_merges or protocol["bpe_merges"]
    clean = protocol["clean"]
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"prepare_wmt14 {pair}: {msg}", file=sys.stderr)

    paths = {l: [corpus_file(orig, c, l) for _, c in protocol["corpora"]] for l in (src, tgt)}
    missing = [p for ps in paths.values() for p in ps if not p.exists()]
    if missing:
        raise BadInput("error: missing corpus files:\n  " + "\n  ".join(map(str, missing)))

    for l in (src, tgt):
        log(f"normalizing and tokenizing train.{l}")
        _tokenize_file(paths[l], tmp / f"train.tok.{l}", l, normalize=True, workers=workers)

    for l, kind in ((src, "src"), (tgt, "ref")):
        sgm = orig / TEST_SGM[pair].format(kind=kind, lang=l)
        if not sgm.exists():
            raise BadInput(f"error: missing test file {sgm}")
        _sgm_tokenized(sgm, tmp / f"test.{l}", l, workers)
        mt_prep.write_lines(out / f"test.raw.{l}", mt_prep.raw_segments(mt_prep.read_lines(sgm)))

    if protocol["valid"] == "newstest2013":
        for l in (src, tgt):
            dev = orig / f"dev/newstest2013.{l}"
            if not dev.exists():
                raise BadInput(f"error: newstest2013 not found: {dev} (from {ARCHIVES['dev']})")
            _tokenize_file([dev], tmp / f"valid.{l}", l, normalize=True, workers=workers)
        n_in, n_out = mt_prep.clean_files(tmp / "train.tok", src, tgt, tmp / "train", **clean)
        log(f"train: {n_in} pairs, {n_out} kept after cleaning (before BPE)")
    else:
        for l in (src, tgt):
            mt_prep.split_file(tmp / f"train.tok.{l}", tmp / f"train.{l}", tmp / f"valid.{l}",
                               protocol["valid"])

    log(f"learning {bpe_merges} joint BPE merges")
    mt_prep.learn_bpe([tmp / f"train.{src}", tmp / f"train.{tgt}"], out / "code", bpe_merges,
                      workers=workers)
    for split in ("train", "valid", "test"):
        for l in (src, tgt):
            mt_prep.write_lines(tmp / f"bpe.{split}.{l}", mt_prep.apply_bpe_lines(
                out / "code", mt_prep.read_lines(tmp / f"{split}.{l}"), workers))

    filtered = [] if protocol["clean_before_bpe"] else ["train", "valid"]
    for split in ("train", "valid", "test"):
        if split in filtered:
            n_in, n_out = mt_prep.clean_files(tmp / f"bpe.{split}", src, tgt, out / split, **clean)
            log(f"{split}: {n_in} pairs, {n_out} kept after cleaning (after BPE)")
        else:
            for l in (src, tgt):
                shutil.copyfile(tmp / f"bpe.{split}.{l}", out / f"{split}.{l}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", choices=sorted(PROTOCOLS), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--orig", type=Path, required=True,
                   help="folder for the downloaded archives (already there: not downloaded again)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    p.add_argument("--bpe-merges", type=int,
                   help="BPE merges (default: 32764 for en-de, 40000 for en-fr)")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    fetch(args.orig, args.pair, not args.no_download)
    prepare(args.orig, args.out, args.pair, args.bpe_merges, args.workers)
    return 0

