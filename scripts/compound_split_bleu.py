#!/usr/bin/env python3
"""BLEU of a ``fairseq-generate --remove-bpe`` output, as the R-Drop paper reports it.

Paper-comparable score: the hypotheses (``H-`` lines) and references (``T-``
lines) are compound-split, i.e. every hyphen between two non-space characters
becomes `` ##AT##-##AT## `` (the ``perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g'``
of fairseq's ``scripts/compound_split_bleu.sh``), and scored with
``fairseq-score``: tokenized, case-sensitive BLEU on the tokenized text.

With ``--sacrebleu-lang L`` it also prints detokenized sacreBLEU with its
signature: hypotheses detokenized with sacremoses, scored against
``--sacrebleu-ref`` (an untokenized reference file in test-set order) or, by
default, against the detokenized ``T-`` lines.

    python scripts/compound_split_bleu.py gen.out
    python scripts/compound_split_bleu.py gen.out --sacrebleu-lang de --sacrebleu-ref test.raw.de
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

from rdrop_experiments.errors import BadInput, run_script

# re.ASCII: Perl's \S on bytes treats every non-ASCII byte as non-space.
_HYPHEN = re.compile(r"(\S)-(\S)", re.ASCII)


def compound_split(line: str) -> str:
    return _HYPHEN.sub(r"\1 ##AT##-##AT## \2", line)


def read_generate_output(path) -> Tuple[List[str], List[str]]:
    """Hypotheses and references of a fairseq-generate log, in sentence-id order."""
    hyps, refs = {}, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("H-"):
                sid, _score, text = (line[2:].split("\t", 2) + [""])[:3]
                hyps[int(sid)] = text
            elif line.startswith("T-"):
                sid, text = (line[2:].split("\t", 1) + [""])[:2]
                refs[int(sid)] = text
    if not hyps:
        raise BadInput(f"error: no H- lines in {path}; is it a fairseq-generate output?")
    if hyps.keys() != refs.keys():
        raise BadInput(f"error: {path} has {len(hyps)} hypotheses but {len(refs)} references")
    ids = sorted(hyps)
    return [hyps[i] for i in ids], [refs[i] for i in ids]


def fairseq_score(sys_path, ref_path) -> str:
    beside_python = Path(sys.executable).parent / "fairseq-score"
    exe = str(beside_python) if beside_python.exists() else shutil.which("fairseq-score")
    if exe is None:
        raise BadInput("error: fairseq-score not found on PATH (install fairseq)")
    out = subprocess.run([exe, "--sys", str(sys_path), "--ref", str(ref_path)],
                         check=True, capture_output=True, text=True).stdout
    bleu = [l for l in out.splitlines() if l.startswith("BLEU")]
    if not bleu:
        raise BadInput(f"error: unexpected fairseq-score output:\n{out}")
    return bleu[-1]


def sacrebleu_score(hyps: List[str], refs: List[str], lang: str, raw_refs: List[str] = None):
    """Detokenized BLEU; returns the sacrebleu BLEUScore and signature."""
    from sacrebleu.metrics import BLEU
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang=lang)
    sys_detok = [detok.detokenize(h.split()) for h in hyps]
    ref_detok = raw_refs if raw_refs is not None else [detok.detokenize(r.split()) for r in refs]
    if len(ref_detok) != len(sys_detok):
        raise BadInput(f"error: {len(sys_detok)} hypotheses but {len(ref_detok)} references")
    bleu = BLEU()
    return bleu.corpus_score(sys_detok, [ref_detok]), bleu.get_signature()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gen", type=Path, help="fairseq-generate output (with --remove-bpe)")
    p.add_argument("--sacrebleu-lang", help="also compute sacreBLEU; target language for detokenizing")
    p.add_argument("--sacrebleu-ref", type=Path, help="untokenized reference (default: detokenized T- lines)")
    args = p.parse_args(argv)

    if not args.gen.is_file():
        raise BadInput(f"error: generate output not found: {args.gen}")
    hyps, refs = read_generate_output(args.gen)
    sys_path, ref_path = Path(f"{args.gen}.sys"), Path(f"{args.gen}.ref")
    sys_path.write_text("".join(compound_split(h) + "\n" for h in hyps), encoding="utf-8")
    ref_path.write_text("".join(compound_split(r) + "\n" for r in refs), encoding="utf-8")
    print(f"compound-split tokenized BLEU ({len(hyps)} sentences): {fairseq_score(sys_path, ref_path)}")

    if args.sacrebleu_lang:
        raw = None
        if args.sacrebleu_ref:
            if not args.sacrebleu_ref.is_file():
                raise BadInput(f"error: reference not found: {args.sacrebleu_ref}")
            raw = args.sacrebleu_ref.read_text(encoding="utf-8").splitlines()
        score, signature = sacrebleu_score(hyps, refs, args.sacrebleu_lang, raw)
        print(f"sacreBLEU (detokenized): {score.format(width=2, signature=str(signature))}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
