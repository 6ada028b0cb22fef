"""The GLUE recipe in examples/sentence_prediction/ (prepare_glue.sh, train_glue.sh), offline.

* ``DRY_RUN=1`` of every task prints every command of both scripts, writes
  nothing and needs no data, torch, fairseq or virtual environment;
* ``train_glue.sh`` has fairseq's published per-task settings (pinned below
  with their source), and the README's tables say what the scripts do;
* the column step gives the bytes of fairseq's own tail/awk/cut steps, MRPC's
  files are built as GLUE's download script builds them, and the evaluation
  step reads fairseq's logs and computes GLUE's metrics as sklearn and scipy do;
* ``SMOKE=1`` runs prepare, train and evaluate end to end on CPU (RTE here, 40 s
  to 100 s on 2 shared cores; STS-B and MNLI with ``-m slow``).
"""

import functools
import hashlib
import json
import os
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rdrop_experiments import glue_data, glue_eval
from rdrop_experiments.errors import BadInput

from .helpers.fairseq_runs import REPO, assert_script_fails_fast, assert_shell_script_parses_and_is_strict

EXAMPLES = REPO / "examples" / "sentence_prediction"
README = EXAMPLES / "README.md"
SCRIPTS = [EXAMPLES / "prepare_glue.sh", EXAMPLES / "train_glue.sh"]
TASKS = ["MNLI", "QNLI", "QQP", "RTE", "SST-2", "MRPC", "CoLA", "STS-B"]
VENV_BIN = str(Path(sys.executable).parent)

# fairseq's GLUE fine-tuning of RoBERTa-large, checked by hand against facebookresearch/fairseq at
# 3d262bb2, examples/roberta/config/finetuning/{mnli,qnli,qqp,rte,sst_2,mrpc,cola,sts_b}.yaml
# (task.num_classes, optimization.lr, dataset.batch_size, optimization.max_update,
# lr_scheduler.warmup_updates), the same values as the table of examples/roberta/README.glue.md
# at 58201a15^ (--num-classes, --lr, --batch-size, --total-num-update, --warmup-updates).
FAIRSEQ_GLUE = {
    "MNLI": dict(num_classes=3, lr=1e-05, batch_size=32, updates=123873, warmup=7432),
    "QNLI": dict(num_classes=2, lr=1e-05, batch_size=32, updates=33112, warmup=1986),
    "QQP": dict(num_classes=2, lr=1e-05, batch_size=32, updates=113272, warmup=28318),
    "RTE": dict(num_classes=2, lr=2e-05, batch_size=16, updates=2036, warmup=122),
    "SST-2": dict(num_classes=2, lr=1e-05, batch_size=32, updates=20935, warmup=1256),
    "MRPC": dict(num_classes=2, lr=1e-05, batch_size=16, updates=2296, warmup=137),
    "CoLA": dict(num_classes=2, lr=1e-05, batch_size=16, updates=5336, warmup=320),
    "STS-B": dict(num_classes=1, lr=2e-05, batch_size=16, updates=3598, warmup=214),
}
# What every <task>.yaml above sets alike (common, task, checkpoint, distributed_training,
# dataset, optimizer, lr_scheduler, optimization, model), as fairseq-train flags.
FAIRSEQ_COMMON = {
    "--fp16": None, "--fp16-init-scale": "4", "--threshold-loss-scale": "1", "--fp16-scale-window": "128",
    "--log-format": "json", "--log-interval": "200",
    "--task": "sentence_prediction", "--init-token": "0", "--separator-token": "2", "--max-positions": "512",
    "--reset-optimizer": None, "--reset-dataloader": None, "--reset-meters": None, "--no-epoch-checkpoints": None,
    "--find-unused-parameters": None, "--required-batch-size-multiple": "1", "--max-tokens": "4400",
    "--optimizer": "adam", "--weight-decay": "0.1", "--adam-betas": "(0.9,0.98)", "--adam-eps": "1e-06",
    "--lr-scheduler": "polynomial_decay", "--clip-norm": "0.0", "--max-epoch": "10",
    "--arch": "roberta_large", "--dropout": "0.1", "--attention-dropout": "0.1",
}
# facebookresearch/fairseq examples/roberta/preprocess_GLUE_tasks.sh: the 1-based input columns of
# train/dev and test, the label column (MNLI's dev splits: DEV_LABEL_COLUMN), CoLA's train and dev
# without a header, QQP's train and dev filtered to lines of 6 fields.
FAIRSEQ_COLUMNS = {
    "QQP": ((4, 5), (2, 3), 6, None), "MNLI": ((9, 10), (9, 10), 12, 16), "QNLI": ((2, 3), (2, 3), 4, None),
    "MRPC": ((4, 5), (4, 5), 1, None), "RTE": ((2, 3), (2, 3), 4, None), "STS-B": ((8, 9), (8, 9), 10, None),
    "SST-2": ((1,), (2,), 2, None), "CoLA": ((4,), (2,), 2, None),
}
# facebookresearch/fairseq examples/roberta/README.md, GLUE dev results of roberta.large
# (as /work/shared/reference/rdrop-anchors.md section 7.3 quotes them).
ROBERTA_LARGE_DEV = {"MNLI": "90.2", "QNLI": "94.7", "QQP": "92.2", "RTE": "86.6", "SST-2": "96.4",
                     "MRPC": "90.9", "CoLA": "68.0", "STS-B": "92.4"}


# ------------------------------------------------------------------ helpers


def _program(words):
    """``fairseq-train``, ``mkdir``, ``python -m glue_data``: what a printed command runs."""
    name = Path(words[0]).name
    if name == "python" and words[1] == "-m":
        return "python -m " + words[2].rpartition(".")[2]
    return name


def _splits(task):
    return 5 if task == "MNLI" else 3


def _inputs(task):
    return 1 if task in ("SST-2", "CoLA") else 2


def expected_prepare(tasks, smoke=False):
    """The programs prepare_glue.sh prints for ``tasks`` with nothing prepared, in order."""
    programs = []
    if smoke:
        programs += ["python -m glue_data"] + ["python -m glue_data"] * len(tasks)
    else:
        programs += ["mkdir"] + 3 * ["curl", "mv"] + ["curl", "mv", "mkdir", "tar"]
        for task in tasks:
            programs += (["mkdir"] + 3 * ["curl", "mv"] + ["python -m glue_data"] if task == "MRPC"
                         else ["curl", "mv", "python -m zipfile"])
    for task in tasks:
        programs += ["python -m glue_data"] + _splits(task) * _inputs(task) * ["python -m multiprocessing_bpe_encoder"]
        programs += ["rm"] + _inputs(task) * ["fairseq-preprocess"]
        programs += ["mkdir", "awk", "awk"] if task == "STS-B" else ["fairseq-preprocess"]
        programs += ["rm", "mv"]
    return programs


TRAIN = ["mkdir", "fairseq-train", "python -m glue_eval"]
# (script, arguments, environment, the programs a dry run on nothing prepared prints)
DRY_RUNS = (
    [("prepare_glue.sh", [task], {}, expected_prepare([task])) for task in TASKS]
    + [("prepare_glue.sh", ["ALL"], {}, expected_prepare(TASKS)),
       ("prepare_glue.sh", ["mnli", "sts-b"], {}, expected_prepare(["MNLI", "STS-B"]))]
    + [("prepare_glue.sh", [task, "--smoke"], {}, expected_prepare([task], smoke=True)) for task in TASKS]
    + [("prepare_glue.sh", ["ALL"], {"SMOKE": "1"}, expected_prepare(TASKS, smoke=True))]
    + [("train_glue.sh", [task], {}, TRAIN) for task in TASKS]
    + [("train_glue.sh", [task], {"SMOKE": "1"},
        expected_prepare([task], smoke=True) + ["fairseq-train", "cp"] + TRAIN) for task in TASKS]
)
IDS = [" ".join([script, *args, *(f"{k}={v}" for k, v in env.items())]) for script, args, env, _ in DRY_RUNS]


def _outputs(results):
    """Every input and output place of the scripts, inside ``results``."""
    return {"GLUE_DIR": str(results / "glue_data"), "WORK": str(results / "work"), "GLUE_BIN": str(results / "bin"),
            "ROBERTA_DIR": str(results / "roberta.large"), "SAVE_DIR": str(results / "save")}


def _bare_env(results, path="/usr/bin:/bin", **extra):
    """No fairseq, torch or .venv on PATH; setup_env.sh, were it sourced, would fail at once."""
    return {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "DRY_RUN": "1", "NUM_GPUS": "1",
            "RDROP_VENV": str(results.parent / "venv"), "PYTHON": "/bin/false", **_outputs(results), **extra}


def _run(script, args, env):
    return subprocess.run(["bash", str(EXAMPLES / script), *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _commands(stderr):
    return [shlex.split(line[len("dry run: "):]) for line in stderr.splitlines() if line.startswith("dry run: ")]


def _dry_run(script, args, env):
    r = _run(script, args, env)
    assert r.returncode == 0, r.stderr[-3000:]
    return _commands(r.stderr)


def _flags(command):
    """{flag: value or None} as fairseq's parser reads the words: the last occurrence wins."""
    values = {}
    command = command[:command.index("&>")] if "&>" in command else command
    for i, word in enumerate(command):
        if word.startswith("--"):
            following = command[i + 1] if i + 1 < len(command) else None
            values[word] = None if following is None or following.startswith("--") else following
    return values


def _checksums(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def _put_prepared(results):
    """A results folder as a finished preparation and training leave it."""
    files = {"roberta.large/model.pt": b"PK\x03\x04 roberta.large " + bytes(range(64)),
             "save/checkpoint_best.pt": b"PK\x03\x04 fine-tuned " + bytes(range(32)),
             "save/train.log": '2026-01-01 | INFO | valid | {"epoch": 1, "valid_accuracy": "50"}\n'.encode(),
             "work/gpt2_bpe/dict.txt": b"50256 1\n", "work/gpt2_bpe/encoder.json": b"{}",
             "work/gpt2_bpe/vocab.bpe": b"#version: 0.2\n"}
    for task in TASKS:
        for split in glue_data.smoke_splits(task):
            files[f"glue_data/{task}/{split}.tsv"] = f"header\t{task}\nrow\t{split}\n".encode()
        for name in ("input0/dict.txt", "input0/train.bin", "input0/valid.bin", "label/dict.txt", "label/train.label"):
            files[f"bin/{task}-bin/{name}"] = f"{task} {name}\n".encode()
    for name, content in files.items():
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_bytes(content)
    return results


# ------------------------------------------------------------- the scripts


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse_and_are_strict(script):
    assert_shell_script_parses_and_is_strict(script)


@pytest.mark.parametrize("script,args,env,expected", DRY_RUNS, ids=IDS)
def test_dry_run_without_data_fairseq_or_venv_prints_every_command(script, args, env, expected, tmp_path):
    results = tmp_path / "results"
    commands = _dry_run(script, args, _bare_env(results, **env))
    assert [_program(c) for c in commands] == expected
    assert list(tmp_path.iterdir()) == [], "the dry run created files or a virtual environment"


@pytest.fixture
def tripwires(tmp_path):
    """python, fairseq's tools, torchrun, curl, tar and awk that note any call in ``calls`` and fail."""
    folder, calls = tmp_path / "tripwires", tmp_path / "calls"
    folder.mkdir()
    for name in ("python", "python3", "fairseq-train", "fairseq-preprocess", "torchrun", "curl", "tar", "awk"):
        (folder / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 1\n')
        (folder / name).chmod(0o755)
    return folder, calls


@pytest.mark.parametrize("script,args,env,expected", DRY_RUNS, ids=IDS)
def test_dry_run_leaves_an_existing_results_folder_byte_identical(script, args, env, expected, tmp_path,
                                                                  tripwires):
    results = _put_prepared(tmp_path / "results")
    before = _checksums(results)
    commands = _dry_run(script, args, _bare_env(results, path=f"{tripwires[0]}:/usr/bin:/bin", **env))
    assert commands and _checksums(results) == before
    assert not tripwires[1].exists(), f"the dry run ran: {tripwires[1].read_text()}"


@pytest.mark.parametrize("gpus", ["1", "4"])
def test_dry_run_prints_the_gpu_command_lines_for_num_gpus(gpus, tmp_path):
    """On this (GPU-less or GPU-hiding) machine too: NUM_GPUS CUDA processes in fp16, never --cpu."""
    commands = _dry_run("train_glue.sh", ["MNLI"], _bare_env(tmp_path / "results", NUM_GPUS=gpus))
    train, evaluate = [c for c in commands if _program(c) in ("fairseq-train", "python -m glue_eval")]
    assert _flags(train)["--distributed-world-size"] == gpus and "--fp16" in train
    assert "--cpu" not in train and "--cpu" not in evaluate


def test_dry_run_of_training_names_the_log_the_evaluation_reads(tmp_path):
    results = tmp_path / "results"
    mkdir, train, evaluate = _dry_run("train_glue.sh", ["RTE", "--log-interval", "7"], _bare_env(results))
    log = str(results / "save" / "train.log")
    assert mkdir == ["mkdir", "-p", str(results / "save")]
    assert train[-2:] == ["&>", log] and train[-4:-2] == ["--log-interval", "7"]  # passthrough last: it wins
    assert _flags(evaluate)["--log"] == log and evaluate[3] == "RTE"
    assert _flags(evaluate)["--checkpoint"] == str(results / "save" / "checkpoint_best.pt")
    assert _flags(evaluate)["--data"] == str(results / "bin" / "RTE-bin")


# ---------------------------------------------------- fairseq's settings


def _train_flags(task, tmp_path, **env):
    commands = _dry_run("train_glue.sh", [task], _bare_env(tmp_path / "results", **env))
    (train,) = [c for c in commands if any(Path(w).name == "fairseq-train" for w in c)]
    return train, _flags(train)


@pytest.mark.parametrize("task", TASKS)
def test_train_has_fairseqs_published_settings_for_the_task(task, tmp_path):
    train, flags = _train_flags(task, tmp_path)
    published = FAIRSEQ_GLUE[task]
    assert int(flags["--num-classes"]) == published["num_classes"]
    assert float(flags["--lr"]) == published["lr"]
    assert int(flags["--batch-size"]) == published["batch_size"] and flags["--update-freq"] == "1"
    assert int(flags["--total-num-update"]) == int(flags["--max-update"]) == published["updates"]
    assert int(flags["--warmup-updates"]) == published["warmup"]
    for flag, value in FAIRSEQ_COMMON.items():
        assert flag in flags, flag
        if value is not None:
            assert flags[flag].replace(" ", "") == value, flag
    if task == "STS-B":
        assert "--regression-target" in flags and flags["--best-checkpoint-metric"] == "loss"
        assert "--maximize-best-checkpoint-metric" not in flags
    else:
        assert "--regression-target" not in flags and flags["--best-checkpoint-metric"] == "accuracy"
        assert "--maximize-best-checkpoint-metric" in flags
    assert flags.get("--valid-subset") == ("valid,valid1" if task == "MNLI" else None)
    assert (flags["--criterion"], flags["--rdrop-alpha"], flags["--seed"]) == ("sentence_prediction_rdrop", "1.0", "1")
    assert flags["--restore-file"] == str(tmp_path / "results" / "roberta.large" / "model.pt")
    assert flags["--user-dir"] == str(REPO / "rdrop_fairseq") and "--shorten-method" not in flags


@pytest.mark.parametrize("task,gpus,batch,expected", [
    ("QNLI", "1", None, ("32", "1", "4400")),
    ("QNLI", "2", None, ("16", "1", "2200")),
    ("QNLI", "8", None, ("4", "1", "550")),
    ("QNLI", "1", "8", ("8", "4", "1100")),
    ("QNLI", "4", "2", ("2", "4", "512")),  # never below one longest input
    ("RTE", "2", "4", ("4", "2", "1100")),
    ("STS-B", "16", None, ("1", "1", "512")),
])
def test_the_update_is_fairseqs_on_any_number_of_gpus(task, gpus, batch, expected, tmp_path):
    env = {"NUM_GPUS": gpus, **({"BATCH_SIZE": batch} if batch else {})}
    if int(gpus) > 8:
        env["LAUNCHER"] = "torchrun --nnodes 2 --nproc_per_node 8"
    _, flags = _train_flags(task, tmp_path, **env)
    assert (flags["--batch-size"], flags["--update-freq"], flags["--max-tokens"]) == expected
    assert int(gpus) * int(expected[0]) * int(expected[1]) == FAIRSEQ_GLUE[task]["batch_size"]


MISSING = "/nonexistent/rdrop-glue"
FAIL_FAST = [
    ("train_glue.sh", [], {}, "usage: train_glue.sh"),
    ("train_glue.sh", ["WNLI"], {}, "usage: train_glue.sh"),
    ("train_glue.sh", ["RTE"], {"DATA": MISSING}, MISSING + "/input0/dict.txt"),
    ("train_glue.sh", ["QNLI"], {"DRY_RUN": "1", "NUM_GPUS": "3"}, "NUM_GPUS x BATCH_SIZE must divide QNLI's 32"),
    ("train_glue.sh", ["RTE"], {"DRY_RUN": "1", "BATCH_SIZE": "0"}, "must divide RTE's 16"),
    ("train_glue.sh", ["RTE"], {"DRY_RUN": "1", "NUM_GPUS": "9"}, "NUM_GPUS must be 1..8"),
    ("train_glue.sh", ["RTE"], {"DRY_RUN": "1", "RDROP_ALPHA": "-1"}, "RDROP_ALPHA must be a number"),
    ("train_glue.sh", ["RTE"], {"DRY_RUN": "1", "CHECKPOINT_ACTIVATIONS": "1"}, "no --checkpoint-activations"),
    ("prepare_glue.sh", [], {}, "usage: prepare_glue.sh"),
    ("prepare_glue.sh", ["RTE", "WNLI"], {}, "usage: prepare_glue.sh"),
    ("prepare_glue.sh", ["RTE"], {"WORKERS": "many"}, "WORKERS must be a positive integer"),
    ("prepare_glue.sh", ["RTE", "MRPC"], {"DATA": MISSING}, "DATA names one task's folder"),
]


@pytest.mark.parametrize("script,args,env,message", FAIL_FAST, ids=[f"{s}-{i}" for i, (s, *_r) in enumerate(FAIL_FAST)])
def test_scripts_name_the_problem_before_looking_for_tools(script, args, env, message):
    assert_script_fails_fast(EXAMPLES / script, args, env, message)


def test_train_names_a_missing_pretrained_model_before_looking_for_tools(tmp_path):
    data = tmp_path / "RTE-bin"
    for name in ("input0/dict.txt", "input0/train.bin", "input0/valid.bin", "label/dict.txt"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("")
    assert_script_fails_fast(EXAMPLES / "train_glue.sh", ["RTE"], {"DATA": str(data), "ROBERTA_DIR": MISSING},
                             f"pretrained model not found: {MISSING}/model.pt (run examples/sentence_prediction/")


# ------------------------------------------------------------- the README


def _table(heading, header_start):
    """The rows (lists of cells) of the first table after ``heading`` whose header starts with ``header_start``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(heading)
    rows, inside = [], False
    for line in lines[start:]:
        if line.startswith(header_start):
            inside = True
            continue
        if inside and line.startswith("| ---"):
            continue
        if inside and line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif inside:
            break
    assert rows, f"no table {header_start!r} under {heading!r}"
    return rows


def test_readme_per_task_table_is_fairseqs():
    rows = _table("### Per-task settings", "| task | classes |")
    assert [r[0] for r in rows] == TASKS
    for task, classes, lr, batch, updates, warmup, metric in rows:
        published = FAIRSEQ_GLUE[task]
        assert (int(classes.split()[0]), float(lr), int(batch), int(updates), int(warmup)) == (
            published["num_classes"], published["lr"], published["batch_size"], published["updates"],
            published["warmup"]), task
        assert metric == ("loss" if task == "STS-B" else "accuracy")


def test_readme_results_table_has_fairseqs_baselines_and_marks_ours_not_run():
    rows = _table("### Results", "| task | figure printed")
    assert [r[0] for r in rows] == TASKS
    for task, _, baseline, paper, ours_baseline, ours in rows:
        assert baseline == ROBERTA_LARGE_DEV[task]
        assert paper == "not verified here" or "not checked against the paper" in paper
        assert ours_baseline == ours == "not run (no GPU)"


FIDELITY = _table("### Fidelity", "| setting | fairseq (source)")
SPANS = [(row[0], span) for row in FIDELITY for span in re.findall(r"`([^`]+)`", row[3])]


def test_every_fidelity_row_has_sources_and_a_checked_value():
    assert len(FIDELITY) >= 12
    for setting, fairseq, official, ours, note in FIDELITY:
        assert re.findall(r"`([^`]+)`", ours), f"row {setting!r} has no checked value"
        assert "(`" in fairseq or "not given" in fairseq, f"row {setting!r}: fairseq's source?"
        assert "(`" in official or "not given" in official, f"row {setting!r}: the official code's source?"


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """GLUE files and roberta.large in place, so that the scripts print no downloads."""
    return _put_prepared(tmp_path_factory.mktemp("glue-stand-in") / "results")


@functools.lru_cache(maxsize=None)
def _cached_dry_run(words, results):
    env = dict(w.split("=", 1) for w in words if "=" in w)
    script, *args = [w for w in words if "=" not in w]
    return tuple(tuple(c) for c in _dry_run(script, args, _bare_env(Path(results), **env)))


@pytest.mark.parametrize("setting,span", SPANS, ids=[f"{s}:{i}" for i, (s, _) in enumerate(SPANS)])
def test_fidelity_table_value_is_what_the_script_does(setting, span, stand_in):
    target, _, check = span.partition(": ")
    words = target.split()
    script_word = next(w for w in words if "=" not in w)
    script, _, program = script_word.partition(">")
    commands = _cached_dry_run(tuple(w if w != script_word else script for w in words), str(stand_in))
    program = program or "fairseq-train"
    command = next(c for c in commands if _program(c) in (program, "python -m " + program))
    flags = _flags(list(command))
    expected = shlex.split(check)
    for i, word in enumerate(expected):
        if word.startswith("--"):
            value = expected[i + 1] if i + 1 < len(expected) and not expected[i + 1].startswith("--") else None
            assert word in flags, f"{span!r}: {word} not in {shlex.join(command)}"
            assert value is None or flags[word] == value, f"{span!r}: {word} {flags[word]!r}"


# --------------------------------------------------------- the column step

ORACLE = r"""
# fairseq's per-split steps of preprocess_GLUE_tasks.sh, for one task, as shell commands
set -euo pipefail
src=$1 out=$2 task=$3 inputs=$4 test_inputs=$5 label=$6 dev_label=$7
shift 7
for split in "$@"; do
  if [ "$task" = CoLA ] && [ "$split" != test ]; then cp "$src/$split.tsv" "$out/$split.tmp"
  else tail -n +2 "$src/$split.tsv" > "$out/$split.tmp"; fi
  if [ "$task" = QQP ] && [ "$split" != test ]; then
    awk -F '\t' -v NUM_FIELDS=6 'NF==NUM_FIELDS{print}{}' "$out/$split.tmp" > "$out/$split.tsv"
  else cp "$out/$split.tmp" "$out/$split.tsv"; fi
  columns=$inputs
  [[ "$split" == test* ]] && columns=$test_inputs
  i=0
  for column in ${columns//,/ }; do cut -f"$column" "$out/$split.tsv" > "$out/$split.raw.input$i"; i=$((i + 1)); done
  if [[ "$split" != test* ]]; then
    if [ "$task" = MNLI ] && [ "$split" != train ]; then cut -f"$dev_label" "$out/$split.tsv" > "$out/$split.label"
    else cut -f"$label" "$out/$split.tsv" > "$out/$split.label"; fi
  fi
done
"""
# Lines no GLUE file should have, which both implementations must treat alike.
ODD_LINES = b"no tab in this line\nonly\ttwo fields\n\nwindows line\tends\twith\tcr\tand\tcrlf\r\n" \
            b"caf\xc3\xa9\t\xe2\x80\x9cquoted\xe2\x80\x9d\t\"a\tb\"\tc\td\te\n" + b"\t" * 16 + b"\n" \
            b"last line\twithout\ta\tnewline\tat\tall"


def _column_flags(task, stand_in):
    (command,) = [c for c in _cached_dry_run(("prepare_glue.sh", task), str(stand_in))
                  if _program(c) == "python -m glue_data"]
    assert command[3] == "columns"
    return list(command[6:])


@pytest.mark.parametrize("task", TASKS)
def test_column_step_gives_the_bytes_of_fairseqs_shell_steps(task, tmp_path, stand_in):
    src = tmp_path / "glue" / task
    glue_data.write_smoke_task(task, src)
    for path in src.iterdir():
        path.write_bytes(path.read_bytes() + ODD_LINES)
    inputs, test_inputs, label, dev_label = FAIRSEQ_COLUMNS[task]
    splits = [p.stem for p in sorted(src.iterdir())]
    oracle = tmp_path / "fairseq"
    oracle.mkdir()
    join = lambda columns: ",".join(map(str, columns))  # noqa: E731
    subprocess.run(["bash", "-c", ORACLE, "oracle", str(src), str(oracle), task, join(inputs), join(test_inputs),
                    str(label), str(dev_label or 0), *splits], check=True, env=dict(os.environ, LC_ALL="C"))
    # the flags prepare_glue.sh passes, through the module's command line
    ours = tmp_path / "ours"
    flags = _column_flags(task, stand_in)
    flags[flags.index("--splits") + 1] = " ".join(splits)
    glue_data.main(["columns", str(src), str(ours), *flags])
    expected = sorted(p.name for p in oracle.iterdir() if ".raw.input" in p.name or p.suffix == ".label")
    assert sorted(p.name for p in ours.iterdir()) == expected
    for name in expected:
        assert (ours / name).read_bytes() == (oracle / name).read_bytes(), name


def test_smoke_task_files_have_glues_layout():
    # spot checks of the stand-in against GLUE's own headers
    assert glue_data._smoke_split("QQP", "train", random.Random(0), glue_data._queries())[0] == \
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    mnli_dev = glue_data._smoke_split("MNLI", "dev_matched", random.Random(0), glue_data._queries())
    assert mnli_dev[0].split("\t")[15] == "gold_label" and len(mnli_dev[1].split("\t")) == 16
    assert all(row.split("\t")[10] != row.split("\t")[15] for row in mnli_dev[1:])  # label1 is never gold
    cola = glue_data._smoke_split("CoLA", "train", random.Random(0), glue_data._queries())
    assert len(cola) == glue_data.SMOKE_ROWS["train"] and all(len(r.split("\t")) == 4 for r in cola)


def test_mrpc_files_are_built_as_glues_download_script_builds_them(tmp_path):
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    (tmp_path / "msr_paraphrase_train.txt").write_text(
        f"{header}\n1\t11\t12\tA cat sat.\tThe cat sat.\n0\t21\t22\tRain.\tSun.\n1\t31\t32\tGo.\tLeave.\n",
        encoding="utf-8")
    (tmp_path / "msr_paraphrase_test.txt").write_text(f"{header}\n1\t41\t42\tUp.\tRise.\n0\t51\t52\tA.\tB.\n",
                                                      encoding="utf-8")
    (tmp_path / "dev_ids.tsv").write_text("21\t22\n", encoding="utf-8")
    assert glue_data.build_mrpc(tmp_path) == {"train": 2, "dev": 1, "test": 2}
    read = lambda name: (tmp_path / name).read_text(encoding="utf-8").splitlines()  # noqa: E731
    assert read("train.tsv") == [header, "1\t11\t12\tA cat sat.\tThe cat sat.", "1\t31\t32\tGo.\tLeave."]
    assert read("dev.tsv") == [header, "0\t21\t22\tRain.\tSun."]
    assert read("test.tsv") == ["index\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t41\t42\tUp.\tRise.",
                                "1\t51\t52\tA.\tB."]


def test_column_step_names_a_missing_split(tmp_path):
    with pytest.raises(BadInput, match="GLUE split not found"):
        glue_data.main(["columns", str(tmp_path), str(tmp_path / "out"), "--splits", "train", "--inputs", "1",
                        "--test-inputs", "1", "--label", "2"])


# --------------------------------------------------------- the evaluation


def _valid(tag, update, **figures):
    record = {"epoch": str(update // 10), **{f"{tag}_{k}": str(v) for k, v in figures.items()},
              f"{tag}_num_updates": str(update)}
    return f"2026-01-01 00:00:00 | INFO | {tag} | {json.dumps(record)}"


def test_log_reading_takes_fairseqs_best_validation_ties_to_the_later(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("\n".join([
        "2026-01-01 00:00:00 | INFO | fairseq_cli.train | begin training",
        _valid("valid", 10, accuracy=80.0, loss=0.5), _valid("valid1", 10, accuracy=79.0, loss=0.6),
        _valid("valid", 20, accuracy=85.5, loss=0.4), _valid("valid1", 20, accuracy=84.0, loss=0.45),
        _valid("valid", 30, accuracy=85.5, loss=0.3), _valid("valid1", 30, accuracy=86.0, loss=0.35),
        _valid("valid", 40, accuracy=70.0, loss=0.2), _valid("valid1", 40, accuracy=71.0, loss=0.25),
    ]) + "\n")
    best = glue_eval.best_validation(log, "MNLI")
    assert best["valid"]["num_updates"] == 30.0 and best["valid"]["accuracy"] == 85.5
    assert best["valid1"]["accuracy"] == 86.0  # at the same update, not valid1's own best
    assert glue_eval.best_validation(log, "RTE")["valid"]["num_updates"] == 30.0
    assert glue_eval.best_validation(log, "STS-B")["valid"]["num_updates"] == 40.0  # smallest loss
    (tmp_path / "empty.log").write_text("no validation yet\n")
    assert glue_eval.best_validation(tmp_path / "empty.log", "RTE") == {}


def test_evaluation_of_a_log_alone_prints_and_writes_the_best_validation(tmp_path, capsys):
    log = tmp_path / "train.log"
    log.write_text(_valid("valid", 10, accuracy=66.4, loss=0.7) + "\n" + _valid("valid", 20, accuracy=71.1, loss=0.6))
    glue_eval.main(["rte", "--log", str(log), "--json", str(tmp_path / "scores.json")])
    out = capsys.readouterr().out
    assert "RTE dev (valid), training log, best validation (largest accuracy; checkpoint_best.pt) at update 20, " \
           "epoch 2: accuracy 71.10, loss 0.600" in out
    assert json.loads((tmp_path / "scores.json").read_text())["validation"]["valid"]["accuracy"] == 71.1


def test_metrics_are_sklearns_and_scipys():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    predictions = [rng.choice("01") for _ in range(200)]
    targets = [p if rng.random() < 0.7 else rng.choice("01") for p in predictions]
    mrpc, cola = glue_eval.scores("MRPC", predictions, targets), glue_eval.scores("CoLA", predictions, targets)
    as_int = lambda labels: [int(x) for x in labels]  # noqa: E731
    assert mrpc["accuracy"] == pytest.approx(100 * sklearn_metrics.accuracy_score(targets, predictions))
    assert mrpc["f1"] == pytest.approx(100 * sklearn_metrics.f1_score(as_int(targets), as_int(predictions)))
    assert cola["mcc"] == pytest.approx(100 * sklearn_metrics.matthews_corrcoef(targets, predictions))
    x = [round(rng.uniform(0, 1), 1) for _ in range(100)]  # rounded: ties in the ranks
    y = [v + rng.gauss(0, 0.3) for v in x]
    sts = glue_eval.scores("STS-B", x, y)
    assert sts["pearson"] == pytest.approx(100 * stats.pearsonr(x, y)[0])
    assert sts["spearman"] == pytest.approx(100 * stats.spearmanr(x, y)[0])
    assert glue_eval.scores("MNLI", ["neutral", "entailment"], ["neutral", "contradiction"]) == {"accuracy": 50.0}


# ------------------------------------------------------------ end to end


def _smoke(task, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SMOKE="1", GLUE_BIN=str(tmp_path / "bin"))
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    for name in ("DATA", "GLUE_DIR", "WORK", "ROBERTA_DIR", "SAVE_DIR", "DRY_RUN", "NUM_GPUS", "BATCH_SIZE"):
        env.pop(name, None)
    r = subprocess.run(["bash", str(EXAMPLES / "train_glue.sh"), task], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    save = tmp_path / "bin" / "checkpoints" / task
    log = (save / "train.log").read_text()
    assert f"Loaded checkpoint {tmp_path / 'bin' / 'roberta' / task / 'model.pt'}" in log
    # the stand-in is a masked language model, as roberta.large: fine-tuning adds the classification head
    assert "Overwriting classification_heads.sentence_classification_head.out_proj.weight" in log
    assert '"kl_loss"' in log and '"num_updates": "3"' in log and "--criterion sentence_prediction_rdrop" in log
    return r, json.loads((save / "dev_scores.json").read_text())


def _assert_rescored_as_validated(report, subsets):
    for subset in subsets:
        validated, rescored = report["validation"][subset], report["checkpoint"][subset]
        assert rescored["examples"] == glue_data.SMOKE_ROWS["dev"]
        assert rescored["accuracy"] == pytest.approx(validated["accuracy"], abs=0.05)  # the log rounds to 0.1


@pytest.mark.usefixtures("cuda_hidden")  # the CPU path, on a GPU machine too
def test_smoke_mode_prepares_fine_tunes_and_evaluates_rte(tmp_path):
    """SMOKE=1 for a sentence-pair task: stand-in GLUE files, the real column/BPE/binarization steps, a tiny
    roberta_large-shaped masked LM standing in for roberta.large, three R-Drop updates restored from it, the
    evaluation (40 s to 100 s on 2 shared cores)."""
    r, report = _smoke("RTE", tmp_path)
    assert report["selected_by"] == "accuracy"
    _assert_rescored_as_validated(report, ["valid"])
    assert "RTE dev (valid), checkpoint_best.pt re-scored: accuracy" in r.stdout
    text = tmp_path / "bin" / "work" / "text" / "RTE"
    assert set((text / "train.label").read_text().split()) <= {"entailment", "not_entailment"}
    assert len((text / "test.raw.input1").read_text().splitlines()) == glue_data.SMOKE_ROWS["test"]


@pytest.mark.slow
@pytest.mark.usefixtures("cuda_hidden")
def test_smoke_mode_of_mnli_validates_matched_and_mismatched(tmp_path):
    """MNLI: five splits, dev labels from gold_label (column 16), valid and valid1 (about 2 minutes)."""
    r, report = _smoke("MNLI", tmp_path)
    _assert_rescored_as_validated(report, ["valid", "valid1"])
    assert "MNLI dev_mismatched (valid1), checkpoint_best.pt re-scored" in r.stdout
    gold = [line.split("\t")[15] for line in
            (tmp_path / "bin" / "glue_data" / "MNLI" / "dev_matched.tsv").read_text().splitlines()[1:]]
    assert (tmp_path / "bin" / "work" / "text" / "MNLI" / "dev_matched.label").read_text().split() == gold


@pytest.mark.slow
@pytest.mark.usefixtures("cuda_hidden")
def test_smoke_mode_of_sts_b_trains_a_regression_kept_by_loss(tmp_path):
    """STS-B: one input pair, scores / 5 as float labels, --regression-target, Pearson and Spearman (~1.5 min)."""
    r, report = _smoke("STS-B", tmp_path)
    assert report["selected_by"] == "loss" and "loss" in report["validation"]["valid"]
    assert set(report["checkpoint"]["valid"]) == {"pearson", "spearman", "examples"}
    labels = (tmp_path / "bin" / "STS-B-bin" / "label" / "valid.label").read_text().split()
    scores = [line.split("\t")[9] for line in
              (tmp_path / "bin" / "glue_data" / "STS-B" / "dev.tsv").read_text().splitlines()[1:]]
    assert [float(x) for x in labels] == pytest.approx([float(s) / 5 for s in scores], abs=1e-6)
