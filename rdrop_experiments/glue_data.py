"""GLUE text for fairseq's sentence_prediction: column extraction, MRPC files, and the offline smoke stand-in."""

# The column extraction repeats fairseq's examples/roberta/preprocess_GLUE_tasks.sh
# byte for byte (tests/test_glue_recipe.py runs its tail/awk/cut steps beside
# it): the first line of a split is a header and is dropped, except in the
# splits named by --headerless (CoLA's train and dev); with --fields N the
# non-test splits keep only lines of exactly N tab-separated fields (QQP); then
# every input column and the label column are cut out, `cut -f` style (a line
# without a tab is taken whole, a missing field is empty). The column numbers
# come from the command line, where prepare_glue.sh passes fairseq's.
#
#   python -m rdrop_experiments.glue_data columns GLUE_DIR/MNLI OUT --splits "train dev_matched ..." \
#       --inputs 9,10 --test-inputs 9,10 --label 12 --dev-label 16
#   python -m rdrop_experiments.glue_data mrpc GLUE_DIR/MRPC
#   python -m rdrop_experiments.glue_data smoke RTE GLUE_DIR/RTE
#   python -m rdrop_experiments.glue_data smoke-bpe GPT2_BPE_DIR

import argparse
import gzip
import json
import random
import sys
from pathlib import Path

from rdrop_experiments.errors import BadInput, run_script

REPO = Path(__file__).resolve().parents[1]
CLINC150 = REPO / "data" / "classification" / "clinc150" / "data_full.json.gz"


# ------------------------------------------------------------------ columns


def lines_of(data: bytes) -> list:
    """The lines of a file's bytes, without their newlines (a last line without one counts)."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def cut_field(line: bytes, column: int) -> bytes:
    """``cut -f COLUMN`` of one line: a line without a tab whole, a missing field empty."""
    if b"\t" not in line:
        return line
    fields = line.split(b"\t")
    return fields[column - 1] if column <= len(fields) else b""


def split_rows(data: bytes, *, header: bool, fields: int = 0) -> list:
    """The rows fairseq keeps of one split: without the header line, and with ``fields`` only the lines of
    exactly that many tab-separated fields (``awk -F '\\t' 'NF==N'``; an empty line has none)."""
    lines = lines_of(data)[1:] if header else lines_of(data)
    if fields:
        lines = [line for line in lines if line and line.count(b"\t") + 1 == fields]
    return lines


def extract_columns(task_dir, out_dir, splits, inputs, test_inputs, label, dev_label=None, headerless=(),
                    fields=0):
    """Writes ``{split}.raw.input{i}`` for every split and ``{split}.label`` for the splits with labels (all
    but ``test*``) into ``out_dir``, from ``task_dir/{split}.tsv``; returns {split: rows}."""
    task_dir, out_dir = Path(task_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in splits:
        path = task_dir / f"{split}.tsv"
        if not path.is_file():
            raise FileNotFoundError(f"GLUE split not found: {path}")
        is_test = split.startswith("test")
        rows = split_rows(path.read_bytes(), header=split not in headerless, fields=0 if is_test else fields)
        for index, column in enumerate(test_inputs if is_test else inputs):
            (out_dir / f"{split}.raw.input{index}").write_bytes(b"".join(cut_field(r, column) + b"\n" for r in rows))
        if not is_test:
            column = dev_label if dev_label and split != "train" else label
            (out_dir / f"{split}.label").write_bytes(b"".join(cut_field(r, column) + b"\n" for r in rows))
        counts[split] = len(rows)
    return counts


# --------------------------------------------------------------------- MRPC


def build_mrpc(mrpc_dir):
    """GLUE's MRPC/{train,dev,test}.tsv from SentEval's msr_paraphrase_{train,test}.txt and GLUE's dev_ids.tsv
    in ``mrpc_dir``, as download_glue_data.py builds them: the training file's pairs listed in dev_ids.tsv
    make dev.tsv, the others train.tsv (both under the source's header line); test.tsv numbers the test pairs
    under an "index" header, without their labels."""
    mrpc_dir = Path(mrpc_dir)
    read = lambda name: (mrpc_dir / name).read_text(encoding="utf-8").splitlines()  # noqa: E731
    dev_ids = {tuple(line.strip().split("\t")) for line in read("dev_ids.tsv") if line.strip()}
    header, *pairs = read("msr_paraphrase_train.txt")
    outputs = {"train": [header], "dev": [header]}
    for row in filter(str.strip, pairs):
        quality, id1, id2, s1, s2 = row.strip().split("\t")
        outputs["dev" if (id1, id2) in dev_ids else "train"].append("\t".join((quality, id1, id2, s1, s2)))
    _, *tests = read("msr_paraphrase_test.txt")
    outputs["test"] = ["index\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    for index, row in enumerate(filter(str.strip, tests)):
        _, id1, id2, s1, s2 = row.strip().split("\t")
        outputs["test"].append("\t".join((str(index), id1, id2, s1, s2)))
    for split, lines in outputs.items():
        (mrpc_dir / f"{split}.tsv").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return {split: len(lines) - 1 for split, lines in outputs.items()}


# -------------------------------------------------------------------- smoke

# Each task's files in GLUE's layout (header line, column order, label values),
# filled with CLINC150 queries: a pair is "the same" when both queries have the
# same intent. The labels mean little; the point is that fairseq's column
# choices are exercised on every task. MNLI's label1 column (11) disagrees with
# gold_label (12 in train, 16 in dev) where it can, so a wrong column shows.
SMOKE_ROWS = {"train": 48, "dev": 16, "test": 8}
MNLI_LABELS = ("entailment", "neutral", "contradiction")


def _queries():
    with gzip.open(CLINC150, "rt", encoding="utf-8") as f:
        data = json.load(f)
    return [(" ".join(text.split()), intent) for text, intent in data["train"]]


def _pairs(rng, queries, count):
    """(query, other query, same intent?) with about half the pairs of the same intent."""
    by_intent = {}
    for text, intent in queries:
        by_intent.setdefault(intent, []).append(text)
    intents = sorted(by_intent)
    pairs = []
    for index in range(count):
        first = rng.choice(intents)
        second = first if index % 2 == 0 else rng.choice([i for i in intents if i != first])
        pairs.append((rng.choice(by_intent[first]), rng.choice(by_intent[second]), first == second))
    return pairs


def _smoke_split(task, split, rng, queries):
    """The lines (header included where GLUE has one) of one smoke split of ``task``."""
    count = SMOKE_ROWS["test" if split.startswith("test") else "dev" if split.startswith("dev") else split]
    test = split.startswith("test")
    if task in ("SST-2", "CoLA"):
        sentences = [rng.choice(queries) for _ in range(count)]
        positive = sorted({intent for _, intent in queries})[::2]
        if test:
            return ["index\tsentence"] + [f"{i}\t{text}" for i, (text, _) in enumerate(sentences)]
        if task == "SST-2":
            return ["sentence\tlabel"] + [f"{text}\t{int(intent in positive)}" for text, intent in sentences]
        lines = []  # CoLA: no header; an unacceptable sentence is the query's words reversed
        for i, (text, _) in enumerate(sentences):
            good = i % 2 == 0
            lines.append(f"clinc\t{int(good)}\t{'' if good else '*'}\t{text if good else ' '.join(text.split()[::-1])}")
        return lines
    pairs = _pairs(rng, queries, count)
    if task == "MRPC":
        head = "index" if test else "Quality"
        return [f"{head}\t#1 ID\t#2 ID\t#1 String\t#2 String"] + [
            f"{i if test else int(same)}\t{1000 + i}\t{2000 + i}\t{a}\t{b}" for i, (a, b, same) in enumerate(pairs)]
    if task == "QQP":
        if test:
            return ["id\tquestion1\tquestion2"] + [f"{i}\t{a}\t{b}" for i, (a, b, _) in enumerate(pairs)]
        lines = ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"] + [
            f"{i}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\t{int(same)}" for i, (a, b, same) in enumerate(pairs)]
        return lines + ["999\ta line that QQP's field filter drops\t0"]  # 3 fields: fairseq's awk drops it
    if task == "STS-B":
        head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
        rows = [f"{i}\tclinc\tqueries\t2019\t{i}\tnone\tnone\t{a}\t{b}" for i, (a, b, _) in enumerate(pairs)]
        if test:
            return [head] + rows
        scores = [5.0 if same else round(rng.uniform(0.0, 2.0), 3) for _, _, same in pairs]
        return [head + "\tscore"] + [f"{row}\t{score:.3f}" for row, score in zip(rows, scores)]
    if task == "MNLI":
        parses = "\t".join(["(x)"] * 4)
        head = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse" \
               "\tsentence2_parse\tsentence1\tsentence2"
        rows = [f"{i}\t{i}\t{i}e\tclinc\t{parses}\t{a}\t{b}" for i, (a, b, _) in enumerate(pairs)]
        if test:
            return [head] + rows
        gold = [MNLI_LABELS[0] if same else MNLI_LABELS[1 + i % 4 // 2] for i, (_, _, same) in enumerate(pairs)]
        wrong = [MNLI_LABELS[(MNLI_LABELS.index(g) + 1) % 3] for g in gold]
        if split == "train":
            return [head + "\tlabel1\tgold_label"] + [f"{r}\t{w}\t{g}" for r, w, g in zip(rows, wrong, gold)]
        return [head + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"] + [
            f"{r}\t{w}\t{g}\t{g}\t{g}\t{g}\t{g}" for r, w, g in zip(rows, wrong, gold)]
    if task in ("QNLI", "RTE"):
        head = "index\tquestion\tsentence" if task == "QNLI" else "index\tsentence1\tsentence2"
        if test:
            return [head] + [f"{i}\t{a}\t{b}" for i, (a, b, _) in enumerate(pairs)]
        return [head + "\tlabel"] + [
            f"{i}\t{a}\t{b}\t{'entailment' if same else 'not_entailment'}" for i, (a, b, same) in enumerate(pairs)]
    raise ValueError(f"unknown GLUE task {task!r}")


def smoke_splits(task):
    if task == "MNLI":
        return ("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")
    return ("train", "dev", "test")


def write_smoke_task(task, task_dir, seed=1):
    """A tiny ``task`` in GLUE's files and layout under ``task_dir``, from CLINC150's training queries."""
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    rng, queries = random.Random(f"{task}-{seed}"), _queries()
    for split in smoke_splits(task):
        lines = _smoke_split(task, split, rng, queries)
        (task_dir / f"{split}.tsv").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def write_smoke_bpe(bpe_dir):
    """A GPT-2-format BPE of the 256 byte symbols without merges, and its fairseq dictionary, standing in
    for GPT-2's encoder.json, vocab.bpe and dict.txt (the real encoder code runs on it)."""
    from fairseq.data.encoders.gpt2_bpe_utils import bytes_to_unicode

    bpe_dir = Path(bpe_dir)
    bpe_dir.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    (bpe_dir / "encoder.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    (bpe_dir / "vocab.bpe").write_text("#version: 0.2\n")
    (bpe_dir / "dict.txt").write_text("".join(f"{i} 1\n" for i in range(len(symbols))))


# ---------------------------------------------------------------------- CLI


def _columns(text):
    return tuple(int(c) for c in text.split(","))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rdrop_experiments.glue_data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    columns = commands.add_parser("columns", help="fairseq's header, filter and column steps for one task")
    columns.add_argument("task_dir", help="the task's GLUE folder ({split}.tsv)")
    columns.add_argument("out", help="where {split}.raw.input0/1 and {split}.label go")
    columns.add_argument("--splits", required=True, help="space-separated split names")
    columns.add_argument("--inputs", type=_columns, required=True, help="input columns, 1-based, comma-separated")
    columns.add_argument("--test-inputs", type=_columns, required=True, help="the test splits' input columns")
    columns.add_argument("--label", type=int, required=True, help="the label column")
    columns.add_argument("--dev-label", type=int, help="the label column of the splits other than train and test")
    columns.add_argument("--headerless", default="", help="comma-separated splits without a header line")
    columns.add_argument("--fields", type=int, default=0, help="keep only lines with this many fields (not test)")
    mrpc = commands.add_parser("mrpc", help="MRPC's {train,dev,test}.tsv from the SentEval files")
    mrpc.add_argument("mrpc_dir")
    smoke = commands.add_parser("smoke", help="a tiny task in GLUE's layout from the shipped CLINC150 queries")
    smoke.add_argument("task")
    smoke.add_argument("task_dir")
    smoke_bpe = commands.add_parser("smoke-bpe", help="the byte-level stand-in for GPT-2's BPE files")
    smoke_bpe.add_argument("bpe_dir")
    args = parser.parse_args(argv)

    if args.command == "columns":
        try:
            counts = extract_columns(args.task_dir, args.out, args.splits.split(), args.inputs, args.test_inputs,
                                     args.label, args.dev_label, tuple(filter(None, args.headerless.split(","))),
                                     args.fields)
        except FileNotFoundError as error:
            raise BadInput(f"glue_data: error: {error}") from None
        print(f"{Path(args.task_dir).name}: " + ", ".join(f"{s} {n} rows" for s, n in counts.items()))
    elif args.command == "mrpc":
        counts = build_mrpc(args.mrpc_dir)
        print("MRPC: " + ", ".join(f"{s} {n} pairs" for s, n in counts.items()))
    elif args.command == "smoke":
        write_smoke_task(args.task, args.task_dir)
    else:
        write_smoke_bpe(args.bpe_dir)


if __name__ == "__main__":
    sys.exit(run_script(main))
