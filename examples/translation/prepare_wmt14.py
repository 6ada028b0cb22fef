#!/usr/bin/env python3
"""WMT'14 English-German and English-French as fairseq's
``prepare-wmt14en2de.sh --icml17`` / ``prepare-wmt14en2fr.sh`` build them.

Protocol (both pairs):

* train: the WMT'14 parallel corpora listed in ``CORPORA``, each line through
  ``normalize-punctuation.perl -l L | remove-non-printing-char.perl |
  tokenizer.perl -a -l L`` (``-a``: hyphens become ``@-@``, so compounds are
  split in the data itself); no lowercasing.
* test: newstest2014 from ``test-full.tgz`` (3,003 segments), ``<seg>`` text
  with right single quotes turned into apostrophes, tokenized with ``-a``.
  The untokenized reference is also written (``test.raw.L``), as sacreBLEU
  reads it, for detokenized BLEU.
* valid: ``newstest2013`` (default for en-de; tokenized like test) or, as in
  fairseq's scripts, every N-th training line held out (``--valid split``;
  N = 100 for en-de, 1333 for en-fr; default for en-fr).
* joint BPE with 40,000 merges learned on train.en + train.{de,fr}, then
  ``clean-corpus-n.perl -ratio 1.5 ... 1 250`` on the BPE'd train (and a
  split-off valid); test and newstest2013 are not filtered.

``--icml17`` is fairseq's option for WMT'14-only data (news-commentary v9);
without it fairseq's en-de script uses WMT'17's news-commentary v12, which
``--nc-v12`` selects here. Output: ``OUT/{train,valid,test}.{en,L}``,
``OUT/code``, ``OUT/test.raw.{en,L}``; intermediate files in ``OUT/tmp``.
"""

import argparse
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mt_prep  # noqa: E402

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
# (archive, corpus prefix inside the extracted archives; files are PREFIX.LANG[.gz])
CORPORA = {
    "en-de": [
        ("europarl", "training/europarl-v7.de-en"),
        ("commoncrawl", "commoncrawl.de-en"),
        ("nc-v9", "training/news-commentary-v9.de-en"),
    ],
    "en-fr": [
        ("europarl", "training/europarl-v7.fr-en"),
        ("commoncrawl", "commoncrawl.fr-en"),
        ("un", "un/undoc.2000.fr-en"),
        ("nc-v9", "training/news-commentary-v9.fr-en"),
        ("giga", "giga-fren.release2.fixed"),
    ],
}
TEST_SGM = {"en-de": "test-full/newstest2014-deen-{kind}.{lang}.sgm",
            "en-fr": "test-full/newstest2014-fren-{kind}.{lang}.sgm"}
VALID_EVERY = {"en-de": 100, "en-fr": 1333}
DEFAULT_VALID = {"en-de": "newstest2013", "en-fr": "split"}
BPE_MERGES = 40000
CLEAN = dict(min_len=1, max_len=250, ratio=1.5)


def corpora(pair: str, nc_v12: bool = False):
    if pair == "en-de" and nc_v12:
        return [c if c[0] != "nc-v9" else ("nc-v12", "training/news-commentary-v12.de-en")
                for c in CORPORA[pair]]
    return CORPORA[pair]


def needed_archives(pair: str, valid: str, nc_v12: bool = False):
    names = [a for a, _ in corpora(pair, nc_v12)] + ["test"]
    return names + (["dev"] if valid == "newstest2013" else [])


def corpus_file(orig: Path, prefix: str, lang: str) -> Path:
    plain = orig / f"{prefix}.{lang}"
    return plain if plain.exists() else orig / f"{prefix}.{lang}.gz"


def _unpacked(orig: Path, name: str, pair: str, nc_v12: bool) -> bool:
    """Whether the files this archive provides are already in ``orig``."""
    src, tgt = pair.split("-")
    if name == "test":
        return (orig / TEST_SGM[pair].format(kind="src", lang=src)).exists()
    if name == "dev":
        return any((orig / "dev").glob("newstest2013*")) if (orig / "dev").is_dir() else False
    prefix = dict(corpora(pair, nc_v12))[name]
    return corpus_file(orig, prefix, src).exists()


def fetch(orig: Path, pair: str, valid: str, nc_v12: bool, download: bool) -> None:
    """Downloads and unpacks into ``orig`` each archive whose files are missing."""
    orig.mkdir(parents=True, exist_ok=True)
    for name in needed_archives(pair, valid, nc_v12):
        if _unpacked(orig, name, pair, nc_v12):
            continue
        url = ARCHIVES[name]
        archive = orig / url.rsplit("/", 1)[1]
        if not archive.exists():
            if not download:
                raise SystemExit(f"error: {archive} is missing (and --no-download was given); "
                                 f"get it from {url}")
            print(f"downloading {url}", file=sys.stderr)
            part = archive.with_name(archive.name + ".part")
            try:
                with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
                    shutil.copyfileobj(r, f)
            except (urllib.error.URLError, OSError) as e:
                part.unlink(missing_ok=True)
                raise SystemExit(f"error: could not download {url} ({e}); without internet, "
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


def prepare(orig: Path, out: Path, pair: str, valid: str = None, nc_v12: bool = False,
            bpe_merges: int = BPE_MERGES, workers: int = 1) -> None:
    src, tgt = pair.split("-")
    valid = valid or DEFAULT_VALID[pair]
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"prepare_wmt14 {pair}: {msg}", file=sys.stderr)

    paths = {l: [corpus_file(orig, c, l) for _, c in corpora(pair, nc_v12)] for l in (src, tgt)}
    missing = [p for ps in paths.values() for p in ps if not p.exists()]
    if missing:
        raise SystemExit("error: missing corpus files:\n  " + "\n  ".join(map(str, missing)))

    for l in (src, tgt):
        log(f"normalizing and tokenizing train.{l}")
        _tokenize_file(paths[l], tmp / f"train.tok.{l}", l, normalize=True, workers=workers)

    for l, kind in ((src, "src"), (tgt, "ref")):
        sgm = orig / TEST_SGM[pair].format(kind=kind, lang=l)
        if not sgm.exists():
            raise SystemExit(f"error: missing test file {sgm}")
        _sgm_tokenized(sgm, tmp / f"test.{l}", l, workers)
        mt_prep.write_lines(out / f"test.raw.{l}", mt_prep.raw_segments(mt_prep.read_lines(sgm)))

    for l in (src, tgt):
        if valid == "split":
            mt_prep.split_file(tmp / f"train.tok.{l}", tmp / f"train.{l}", tmp / f"valid.{l}",
                               VALID_EVERY[pair])
        else:
            kind = "src" if l == src else "ref"
            sgm = orig / f"dev/newstest2013-{kind}.{l}.sgm"
            if sgm.exists():
                _sgm_tokenized(sgm, tmp / f"valid.{l}", l, workers)
            elif (orig / f"dev/newstest2013.{l}").exists():
                _tokenize_file([orig / f"dev/newstest2013.{l}"], tmp / f"valid.{l}", l,
                               normalize=False, workers=workers)
            else:
                raise SystemExit(f"error: newstest2013 not found under {orig / 'dev'}")
            (tmp / f"train.tok.{l}").replace(tmp / f"train.{l}")

    log(f"learning {bpe_merges} joint BPE merges")
    mt_prep.learn_bpe([tmp / f"train.{src}", tmp / f"train.{tgt}"], out / "code", bpe_merges,
                      workers=workers)
    for split in ("train", "valid", "test"):
        for l in (src, tgt):
            mt_prep.write_lines(tmp / f"bpe.{split}.{l}", mt_prep.apply_bpe_lines(
                out / "code", mt_prep.read_lines(tmp / f"{split}.{l}"), workers))

    filtered = ["train"] + (["valid"] if valid == "split" else [])
    for split in ("train", "valid", "test"):
        if split in filtered:
            n_in, n_out = mt_prep.clean_files(tmp / f"bpe.{split}", src, tgt, out / split,
                                              CLEAN["min_len"], CLEAN["max_len"], CLEAN["ratio"])
            log(f"{split}: {n_in} pairs, {n_out} kept after cleaning")
        else:
            for l in (src, tgt):
                shutil.copyfile(tmp / f"bpe.{split}.{l}", out / f"{split}.{l}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", choices=sorted(CORPORA), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--orig", type=Path, required=True,
                   help="folder for the downloaded archives (already there: not downloaded again)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    p.add_argument("--valid", choices=["newstest2013", "split"],
                   help="validation set (default: newstest2013 for en-de, split for en-fr)")
    p.add_argument("--icml17", action="store_true",
                   help="WMT'14 news-commentary v9 for en-de (the default here; kept for "
                        "fairseq compatibility)")
    p.add_argument("--nc-v12", action="store_true",
                   help="en-de with WMT'17 news-commentary v12, fairseq's default")
    p.add_argument("--bpe-merges", type=int, default=BPE_MERGES)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    if args.icml17 and args.nc_v12:
        p.error("--icml17 and --nc-v12 exclude each other")
    valid = args.valid or DEFAULT_VALID[args.pair]
    fetch(args.orig, args.pair, valid, args.nc_v12, not args.no_download)
    prepare(args.orig, args.out, args.pair, valid, args.nc_v12, args.bpe_merges, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
