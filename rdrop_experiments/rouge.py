"""ROUGE-1/2/L/Lsum F1 of a hypothesis file against one or more reference files.

Scores with Google's ``rouge-score`` package (no perl ROUGE-1.5.5, no
files2rouge). Every file holds one summary per line, line *i* of each file
belonging to example *i*.

Normalisation (rouge-score's default tokenizer, the same for every metric):
text is lowercased, every character other than ``a-z0-9`` becomes a space,
and with stemming (the default, as for the CNN/DailyMail numbers of BART and
R-Drop) tokens longer than 3 characters are reduced by the Porter stemmer.

Two ROUGE-L variants are reported, and they differ on multi-sentence summaries:

* ``rougeL`` ("ROUGE-L (whole-summary LCS)"): the longest common subsequence
  of the two summaries taken as one token sequence.
* ``rougeLsum`` ("ROUGE-Lsum"): the summary-level LCS of ROUGE-1.5.5, the
  union of each reference sentence's LCS with every hypothesis sentence. This
  is what ROUGE-1.5.5 (and so files2rouge, which BART and R-Drop used) prints
  as ROUGE-L when a summary has one sentence per line, i.e. the ROUGE-L of
  the papers' CNN/DailyMail tables.

rouge-score reads sentences as newline-separated. A line has no newline, so
sentences are marked inside it: ``--sentence-separator`` (default ``<n>``) is
replaced by a newline, and ``--split-sentences`` also splits the text into
sentences with pysbd, a rule-based sentence splitter that keeps
abbreviations, initials and decimal numbers whole (use it for CNN/DailyMail
output, where a summary's sentences are joined by spaces).

Several reference files: each example takes, per metric, the reference with
the highest F1 (rouge-score's ``score_multi``). An empty line in a reference
file means "no such reference for this example", so references per example
may vary; every example needs at least one.

Reported: the mean over examples of each F1, times 100.

    python scripts/rouge.py test.hypo test.target --split-sentences
    python scripts/rouge.py hyp.txt ref1.txt ref2.txt ref3.txt --json rouge.json
"""

import argparse
import json
from functools import lru_cache
from pathlib import Path

from rdrop_experiments.errors import BadInput

METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
# The printed table names what each ROUGE-L variant is.
TABLE_LABELS = {**LABELS, "rougeL": "ROUGE-L (whole-summary LCS)",
                "rougeLsum": "ROUGE-Lsum (per sentence; files2rouge's ROUGE-L)"}


@lru_cache(maxsize=1)
def _segmenter():
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def split_into_sentences(text):
    """The sentences of ``text`` as pysbd finds them, stripped, empty ones dropped."""
    return [s.strip() for s in _segmenter().segment(text) if s.strip()]


def to_sentences(text, separator="<n>", split_sentences=False):
    """One summary line as newline-separated sentences, the form ROUGE-Lsum reads."""
    parts = text.split(separator) if separator else [text]
    if split_sentences:
        parts = [s for part in parts if part.strip() for s in split_into_sentences(part)]
    return "\n".join(p.strip() for p in parts if p.strip())


def score(hypotheses, references, stem=True):
    """Per-metric mean F1 (x100), precision and recall over examples.

    ``hypotheses``: a list of summaries; ``references``: for each example, a
    non-empty list of reference summaries. Sentences are newline-separated.
    """
    from rouge_score import rouge_scorer

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("nothing to score: no hypotheses")
    for index, refs in enumerate(references):
        if not refs:
            raise ValueError(f"example {index + 1} has no reference")
    scorer = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=stem)
    totals = {m: {"fmeasure": 0.0, "precision": 0.0, "recall": 0.0} for m in METRICS}
    for hyp, refs in zip(hypotheses, references):
        scores = scorer.score_multi(refs, hyp)
        for m in METRICS:
            for field in totals[m]:
                totals[m][field] += getattr(scores[m], field)
    return {m: {field: 100 * value / len(hypotheses) for field, value in fields.items()}
            for m, fields in totals.items()}


def read_files(hyp_path, ref_paths, separator="<n>", split_sentences=False):
    """(hypotheses, references) from line-aligned files, sentences newline-separated."""
    def lines(path):
        if not Path(path).is_file():
            raise BadInput(f"rouge.py: error: file not found: {path}")
        return Path(path).read_text(encoding="utf-8").splitlines()

    hyps = lines(hyp_path)
    ref_columns = [lines(p) for p in ref_paths]
    for path, column in zip(ref_paths, ref_columns):
        if len(column) != len(hyps):
            raise BadInput(f"rouge.py: error: {path} has {len(column)} lines but {hyp_path} has {len(hyps)}; "
                             "files must be line-aligned (one summary per line, empty line for a missing reference)")
    references = []
    for index, refs in enumerate(zip(*ref_columns)):
        present = [to_sentences(r, separator, split_sentences) for r in refs if r.strip()]
        if not present:
            raise BadInput(f"rouge.py: error: example {index + 1} (line {index + 1}) has an empty line in every "
                             "reference file; each example needs at least one reference")
        references.append(present)
    return [to_sentences(h, separator, split_sentences) for h in hyps], references


def format_table(result):
    rows = [(TABLE_LABELS[m], f"{result[m]['fmeasure']:.2f}", f"{result[m]['precision']:.2f}", f"{result[m]['recall']:.2f}")
            for m in METRICS]
    header = ("metric", "F1", "P", "R")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    return "\n".join(" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hypotheses", help="one summary per line")
    parser.add_argument("references", nargs="+", help="one or more line-aligned reference files")
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    parser.add_argument("--no-stem", action="store_true", help="do not apply the Porter stemmer")
    parser.add_argument("--sentence-separator", default="<n>",
                        help="marker between sentences inside a line (default <n>; '' for none)")
    parser.add_argument("--split-sentences", action="store_true",
                        help="also split the text into sentences with pysbd (for ROUGE-Lsum on summaries "
                             "whose sentences are joined by spaces, e.g. CNN/DailyMail)")
    args = parser.parse_args(argv)
    hyps, refs = read_files(args.hypotheses, args.references, args.sentence_separator, args.split_sentences)
    result = score(hyps, refs, stem=not args.no_stem)
    print(format_table(result))
    print(f"{len(hyps)} examples, {sum(map(len, refs)) / len(refs):.2f} references per example, "
          f"stemming {'off' if args.no_stem else 'on'}")
    if args.json:
        args.json.write_text(json.dumps({
            "examples": len(hyps), "stemming": not args.no_stem,
            "references": [str(p) for p in args.references], "hypotheses": args.hypotheses,
            "scores": result,
        }, indent=2))
    return 0

