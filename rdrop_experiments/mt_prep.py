"""Text-processing stages of fairseq's translation preparation scripts, in Python.

fairseq's ``prepare-iwslt14.sh`` and ``prepare-wmt14en2{de,fr}.sh`` clone Moses
and subword-nmt and pipe text through Perl. The stages here do the same work
with the PyPI packages ``sacremoses`` and ``subword-nmt``, so the recipes need
no git clone and no Perl:

========================  =================================================
Moses Perl script         here
========================  =================================================
normalize-punctuation     :func:`normalize_punctuation` (``perl_parity``)
remove-non-printing-char  :func:`remove_non_printing`
tokenizer.perl [-a]       :func:`tokenize_lines`
lowercase.perl            :func:`lowercase`
clean-corpus-n.perl       :func:`clean_pairs`
awk 'NR%N==0'             :func:`split_every`
learn_bpe.py / apply_bpe  :func:`learn_bpe`, :func:`apply_bpe_lines`
========================  =================================================

Every stage works on iterables of lines without their newline, and is also a
subcommand, so each step can be run (and checked) on its own::

    python mt_prep.py tokenize -l de --lowercase < raw.de > tok.de
    python mt_prep.py clean --ratio 1.5 --min 1 --max 175 tok de en clean
    python mt_prep.py split --every 23 clean.de train.de valid.de
    python mt_prep.py learn-bpe -s 10000 -o code train.de train.en
    python mt_prep.py apply-bpe -c code < train.de > bpe.train.de
"""

import argparse
import gzip
import itertools
import multiprocessing
import re
import sys
import tarfile
from functools import lru_cache, partial
from pathlib import Path
from typing import Iterable, Iterator, List, Sequence, Tuple

import regex
from sacremoses import MosesPunctNormalizer, MosesTokenizer

from rdrop_experiments.errors import BadInput

# ---------------------------------------------------------------- file helpers


def read_lines(path) -> Iterator[str]:
    """Lines of a UTF-8 text file (``.gz`` allowed), without the line break."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="\n") as f:
        for line in f:
            yield line.rstrip("\n")


def write_lines(path, lines: Iterable[str]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
    return n


def extract_tar(archive, dest) -> None:
    """Unpacks ``archive`` into ``dest``, refusing members that would land
    outside ``dest`` (absolute paths, ``..``, links, devices).

    Python 3.12, 3.11.4+, 3.10.12+ and 3.9.17+ do this with the ``data``
    extraction filter; older releases have no ``filter`` argument, so the same
    rules are checked here before a plain ``extractall``.
    """
    dest = Path(dest)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        root = dest.resolve()
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if not (member.isfile() or member.isdir()) or (target != root and root not in target.parents):
                raise BadInput(f"error: {archive}: refusing to extract {member.name!r} (not a plain file "
                                 f"or folder inside {dest}); unpack the archive by hand and pass its folder")
        tar.extractall(dest)


# ------------------------------------------------------------- markup removal

_SEG_OPEN = re.compile(r'<seg id="[0-9]*">\s*')
_SEG_CLOSE = re.compile(r"\s*</seg>\s*")


def extract_segments(lines: Iterable[str]) -> Iterator[str]:
    """Text of the ``<seg id=...>`` lines of a WIT3 XML or WMT SGML file.

    Same edits as the fairseq scripts' ``grep '<seg id' | sed ...`` pipeline,
    including its replacement of the right single quote by an apostrophe,
    which the tokenizer then escapes like any other apostrophe.
    """
    for line in lines:
        if "<seg id" in line:
            line = _SEG_CLOSE.sub("", _SEG_OPEN.sub("", line))
            yield line.replace("\u2019", "'")


def raw_segments(lines: Iterable[str]) -> Iterator[str]:
    """Segments exactly as sacreBLEU reads a WMT SGML file: untokenized, with
    whitespace squeezed. This is the reference for detokenized BLEU."""
    for line in lines:
        if line.startswith("<seg "):
            text = re.sub(r"<seg.*?>(.*)</seg>.*?", r"\1", line)
            yield re.sub(r"\s+", " ", text.strip())


# ------------------------------------------------------------- normalisation


@lru_cache(maxsize=None)
def _normalizer(lang: str) -> MosesPunctNormalizer:
    return MosesPunctNormalizer(lang=lang, perl_parity=True)


def normalize_punctuation(line: str, lang: str) -> str:
    return _normalizer(lang).normalize(line)


_NON_PRINTING = regex.compile(r"\p{C}")


def remove_non_printing(line: str) -> str:
    # The Perl script replaces with a space (not nothing): words stay apart.
    return _NON_PRINTING.sub(" ", line)


def lowercase(line: str) -> str:
    """Perl's ``lc``: per-character lowercasing. Python's ``str.lower`` would
    also apply the context-dependent Greek final sigma, which Perl does not."""
    if "\u03a3" in line:
        return "".join(c.lower() for c in line)
    return line.lower()


# ---------------------------------------------------------------- tokenizing


@lru_cache(maxsize=None)
def _tokenizer(lang: str) -> MosesTokenizer:
    return MosesTokenizer(lang=lang)


def tokenize_line(
    line: str,
    lang: str,
    aggressive: bool = False,
    lower: bool = False,
    normalize: bool = False,
) -> str:
    """One line through [normalize-punctuation | remove-non-printing-char |]
    tokenizer.perl [-a] -l LANG [| lowercase.perl]."""
    if normalize:
        line = remove_non_printing(normalize_punctuation(line, lang))
    # tokenizer.perl echoes blank lines untouched instead of tokenizing them.
    if line.strip():
        line = _split_final_period(
            _tokenizer(lang).tokenize(
                line, aggressive_dash_splits=aggressive, return_str=True, escape=True
            )
        )
    return lowercase(line) if lower else line


def _split_final_period(line: str) -> str:
    # Moses' tokenizer.perl (since 2017) always detaches the period of the
    # last word, abbreviation or not ("usw." -> "usw ."); sacremoses 0.2.0
    # keeps known abbreviations whole. The fairseq data shows the Perl
    # behaviour, so apply it. All-dot tokens ("...") are left alone, as the
    # Perl script protects them as DOTMULTI at this stage.
    head, sep, last = line.rpartition(" ")
    if len(last) > 1 and last.endswith(".") and last.strip("."):
        return f"{head}{sep}{last[:-1]} ."
    return line


def _tokenize_chunk(chunk: List[str], **kwargs) -> List[str]:
    return [tokenize_line(line, **kwargs) for line in chunk]


def _chunks(lines: Iterable[str], size: int) -> Iterator[List[str]]:
    it = iter(lines)
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk


def tokenize_lines(
    lines: Iterable[str],
    lang: str,
    aggressive: bool = False,
    lower: bool = False,
    normalize: bool = False,
    workers: int = 1,
) -> Iterator[str]:
    """Streaming, order-preserving; ``workers`` > 1 tokenizes chunks in
    parallel (the Perl scripts' ``-threads``, with the same output)."""
    kwargs = dict(lang=lang, aggressive=aggressive, lower=lower, normalize=normalize)
    if workers <= 1:
        for line in lines:
            yield tokenize_line(line, **kwargs)
        return
    with multiprocessing.Pool(workers) as pool:
        for chunk in pool.imap(partial(_tokenize_chunk, **kwargs), _chunks(lines, 2000)):
            yield from chunk


# ------------------------------------------------------------------ cleaning


def _squeeze(line: str, drop_bars: bool) -> str:
    if drop_bars:
        line = line.replace("|", "")
    return re.sub(r"\s+", " ", line).strip(" ")


def clean_pairs(
    src: Iterable[str],
    tgt: Iterable[str],
    min_len: int = 1,
    max_len: int = 175,
    ratio: float = 1.5,
    max_word_length: int = 1000,
) -> Iterator[Tuple[str, str]]:
    """The filter of ``clean-corpus-n.perl -ratio R corpus l1 l2 out MIN MAX``.

    Whitespace is squeezed (and ``|`` removed unless the first pair contains
    one, Moses' "factored" corpora) before counting space-separated tokens. A
    pair is dropped when either side is empty, has fewer than ``min_len`` or
    more than ``max_len`` tokens, when one side is more than ``ratio`` times
    longer than the other, or when a word is longer than ``max_word_length``
    characters. Kept pairs are yielded in their squeezed form, as Moses
    writes them.
    """
    factored = None
    long_word = re.compile(r"[^\s|]{%d}" % (max_word_length + 1))
    for s, t in itertools.zip_longest(src, tgt):
        if s is None or t is None:
            raise ValueError("clean_pairs: the two sides have different numbers of lines")
        if factored is None:
            factored = "|" in s or "|" in t
        s, t = _squeeze(s, not factored), _squeeze(t, not factored)
        if not s or not t:
            continue
        ns, nt = len(s.split(" ")), len(t.split(" "))
        if not (min_len <= ns <= max_len and min_len <= nt <= max_len):
            continue
        if ns / nt > ratio or nt / ns > ratio:
            continue
        if long_word.search(s) or long_word.search(t):
            continue
        yield s, t


def clean_files(prefix, l1, l2, out_prefix, min_len, max_len, ratio) -> Tuple[int, int]:
    """``clean-corpus-n.perl`` on files ``prefix.l1``/``prefix.l2``."""
    src = read_lines(f"{prefix}.{l1}")
    tgt = read_lines(f"{prefix}.{l2}")
    n_in = 0

    def counted(lines):
        nonlocal n_in
        for line in lines:
            n_in += 1
            yield line

    kept = clean_pairs(counted(src), tgt, min_len, max_len, ratio)
    n_out = 0
    with open(f"{out_prefix}.{l1}", "w", encoding="utf-8") as f1, open(
        f"{out_prefix}.{l2}", "w", encoding="utf-8"
    ) as f2:
        for s, t in kept:
            f1.write(s + "\n")
            f2.write(t + "\n")
            n_out += 1
    return n_in, n_out


# ----------------------------------------------------------------- splitting


def split_every(lines: Iterable[str], every: int) -> Tuple[List[str], List[str]]:
    """``(rest, held_out)``: line numbers (from 1) divisible by ``every`` are
    held out, like ``awk 'NR%every==0'`` in the fairseq scripts."""
    rest, held = [], []
    for i, line in enumerate(lines, start=1):
        (held if i % every == 0 else rest).append(line)
    return rest, held


def split_file(path, rest_path, held_path, every: int) -> Tuple[int, int]:
    n_rest = n_held = 0
    with open(rest_path, "w", encoding="utf-8") as fr, open(held_path, "w", encoding="utf-8") as fh:
        for i, line in enumerate(read_lines(path), start=1):
            if i % every == 0:
                fh.write(line + "\n")
                n_held += 1
            else:
                fr.write(line + "\n")
                n_rest += 1
    return n_rest, n_held


# ----------------------------------------------------------------------- BPE


def learn_bpe(inputs: Sequence, codes_path, merges: int, workers: int = 1) -> None:
    """Joint BPE on the concatenation of ``inputs`` (``cat a b | learn_bpe.py -s N``)."""
    from subword_nmt.learn_bpe import learn_bpe as _learn

    files = [open(p, encoding="utf-8") for p in inputs]
    try:
        with open(codes_path, "w", encoding="utf-8") as out:
            if workers > 1:
                # subword-nmt's parallel counting needs one real file
                joined = Path(str(codes_path) + ".input")
                with open(joined, "w", encoding="utf-8") as j:
                    for f in files:
                        for line in f:
                            j.write(line)
                with open(joined, encoding="utf-8") as j:
                    _learn(j, out, merges, num_workers=workers)
                joined.unlink()
            else:
                _learn(itertools.chain(*files), out, merges)
    finally:
        for f in files:
            f.close()


@lru_cache(maxsize=4)
def _bpe(codes_path: str):
    from subword_nmt.apply_bpe import BPE

    with open(codes_path, encoding="utf-8") as f:
        return BPE(f)


def _bpe_chunk(chunk: List[str], codes_path: str) -> List[str]:
    bpe = _bpe(codes_path)
    return [bpe.process_line(line) for line in chunk]


def apply_bpe_lines(codes_path, lines: Iterable[str], workers: int = 1) -> Iterator[str]:
    """``apply_bpe.py -c codes`` (default ``@@`` separator, no vocabulary)."""
    codes_path = str(codes_path)
    if workers <= 1:
        bpe = _bpe(codes_path)
        for line in lines:
            yield bpe.process_line(line)
        return
    with multiprocessing.Pool(workers) as pool:
        for chunk in pool.imap(partial(_bpe_chunk, codes_path=codes_path), _chunks(lines, 5000)):
            yield from chunk


def remove_bpe(line: str) -> str:
    """fairseq's ``--remove-bpe`` for subword-nmt output."""
    return (line + " ").replace("@@ ", "").rstrip()


# ----------------------------------------------------------------------- CLI


def _stdin_lines() -> Iterator[str]:
    sys.stdin.reconfigure(encoding="utf-8")
    for line in sys.stdin:
        yield line.rstrip("\n")


def _write_stdout(lines: Iterable[str]) -> None:
    sys.stdout.reconfigure(encoding="utf-8")
    for line in lines:
        sys.stdout.write(line + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("tokenize", help="stdin -> stdout: Moses tokenizer (+ options)")
    t.add_argument("-l", "--lang", required=True)
    t.add_argument("-a", "--aggressive", action="store_true", help="tokenizer.perl -a")
    t.add_argument("--lowercase", action="store_true", help="then lowercase.perl")
    t.add_argument("--normalize", action="store_true",
                   help="first normalize-punctuation.perl and remove-non-printing-char.perl")
    t.add_argument("--workers", type=int, default=1)

    c = sub.add_parser("clean", help="clean-corpus-n.perl: PREFIX L1 L2 OUT_PREFIX")
    c.add_argument("prefix")
    c.add_argument("l1")
    c.add_argument("l2")
    c.add_argument("out_prefix")
    c.add_argument("--ratio", type=float, default=1.5)
    c.add_argument("--min", type=int, default=1)
    c.add_argument("--max", type=int, default=175)

    s = sub.add_parser("split", help="hold out every N-th line: IN REST_OUT HELD_OUT")
    s.add_argument("input")
    s.add_argument("rest")
    s.add_argument("held")
    s.add_argument("--every", type=int, required=True)

    lb = sub.add_parser("learn-bpe", help="joint BPE codes from the concatenated inputs")
    lb.add_argument("inputs", nargs="+")
    lb.add_argument("-s", "--symbols", type=int, required=True)
    lb.add_argument("-o", "--output", required=True)
    lb.add_argument("--workers", type=int, default=1)

    ab = sub.add_parser("apply-bpe", help="stdin -> stdout: apply BPE codes")
    ab.add_argument("-c", "--codes", required=True)
    ab.add_argument("--workers", type=int, default=1)

    args = p.parse_args(argv)
    if args.cmd == "tokenize":
        _write_stdout(tokenize_lines(_stdin_lines(), args.lang, args.aggressive,
                                     args.lowercase, args.normalize, args.workers))
    elif args.cmd == "clean":
        n_in, n_out = clean_files(args.prefix, args.l1, args.l2, args.out_prefix,
                                  args.min, args.max, args.ratio)
        print(f"clean: {n_in} pairs in, {n_out} kept", file=sys.stderr)
    elif args.cmd == "split":
        n_rest, n_held = split_file(args.input, args.rest, args.held, args.every)
        print(f"split: {n_rest} kept, {n_held} held out", file=sys.stderr)
    elif args.cmd == "learn-bpe":
        learn_bpe(args.inputs, args.output, args.symbols, args.workers)
    elif args.cmd == "apply-bpe":
        _write_stdout(apply_bpe_lines(args.codes, _stdin_lines(), args.workers))
    return 0

