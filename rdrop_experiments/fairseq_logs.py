"""The records of fairseq's ``--log-format json`` output, and the curves they make.

fairseq prints one record per line, ``<time> | INFO | <tag> | {json}``, with
``tag`` ``train_inner`` (every --log-interval updates), ``valid`` and
``train`` (epoch summaries); ``--log-file`` holds the bare JSON. Values are
strings; numbers are converted here.
"""

import json
from pathlib import Path


def read_records(log_path, tag):
    """The records of one tag, values as floats where they are numbers.

    Reads console output (``... | valid | {...}``) and ``--log-file`` files,
    whose lines are the bare JSON; there the tag follows from the key prefix
    (``valid_*``, ``train_*``, or none for ``train_inner``).
    """
    lines = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()
    return [record for line_tag, record in filter(None, map(parse_record, lines)) if line_tag == tag]


def parse_record(line):
    """(tag, record) of one line of fairseq's json output, or None for any other line."""
    line_tag, _, payload = line.rstrip("\n").rpartition(" | ")
    line_tag = line_tag.rpartition(" | ")[2] if line_tag else None
    if not payload.startswith("{"):
        return None
    try:
        raw = json.loads(payload)
    except json.JSONDecodeError:
        return None
    if not isinstance(raw, dict):
        return None
    return line_tag or _tag_of(raw), {key: _number(value) for key, value in raw.items()}


def _tag_of(record):
    # train_inner records carry "train_wall" too, so look at the loss key.
    for prefix in ("valid", "train"):
        if prefix + "_loss" in record:
            return prefix
    return "train_inner"


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def curves(log_path):
    """{"train": {updates, loss, kl_loss}, "valid": {updates, loss, bleu}} lists."""
    train = read_records(log_path, "train_inner")
    valid = read_records(log_path, "valid")
    return {
        "train": {
            "updates": [r.get("num_updates") for r in train],
            "loss": [r.get("loss") for r in train],
            "kl_loss": [r.get("kl_loss") for r in train],
        },
        "valid": {
            "updates": [r.get("valid_num_updates") for r in valid],
            "loss": [r.get("valid_loss") for r in valid],
            "bleu": [r.get("valid_bleu") for r in valid],
        },
    }
