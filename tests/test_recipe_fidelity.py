"""The fidelity tables of the three recipe READMEs pin the recipes' command lines.

Each table has the columns "setting | paper / official value (source) | this
recipe | note". Every code span in the "this recipe" column is a check:

* ``[VAR=value ...] script.sh [args]: --flag [value] ...`` runs the script with
  ``DRY_RUN=1`` (and the variables) on stand-in data, and every flag, with its
  value where one is given, must be in the fairseq command line it prints;
* ``module.py: expression == literal`` evaluates the expression in that
  recipe file (or one of scripts/), with the names of the rdrop_experiments
  module an entry point runs, and compares it with the literal.

So a table that says one thing while a script does another fails here, in
either direction of a later edit. A flag given twice counts as fairseq's parser
reads it: the last occurrence wins.

The "paper / official value" column is pinned too: ``OFFICIAL`` holds, row by
row, the values of the official sources as literals (each checked by hand
against the file named beside it), which the cell must state and cite, and
which the recipe must use, up to the renames listed in ``RENAMED``. A row
without a source says "not published".
"""

import ast
import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers.fairseq_runs import REPO

READMES = {name: REPO / "examples" / name / "README.md" for name in ("translation", "language_model", "summarization")}
HEADER = re.compile(r"^\| setting \| paper / official value \(source\) \| this recipe \| note \|$")
SPAN = re.compile(r"`([^`]+)`")
# Every file a recipe script checks for before it builds its command line.
STAND_IN_FILES = [
    "dict.de.txt", "dict.en.txt", "train.de-en.de.bin", "valid.de-en.de.bin", "test.de-en.de.bin",
    "train.en-de.en.bin", "valid.en-de.en.bin", "test.en-de.en.bin", "dict.txt", "train.bin", "valid.bin",
    "test.bin", "dict.source.txt", "dict.target.txt", "train.source-target.source.bin",
    "valid.source-target.source.bin", "test.target", "test.source", "model.pt", "checkpoint.pt",
]


def fidelity_tables(readme):
    """{(table number, setting): (official cell, recipe cell)} of the fidelity tables in ``readme``."""
    rows, table = {}, -1
    in_table = False
    for line in readme.read_text(encoding="utf-8").splitlines():
        if HEADER.match(line):
            in_table, table = True, table + 1
            continue
        if in_table and line.startswith("| ---"):
            continue
        if in_table and line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            assert len(cells) == 4, f"{readme}: a fidelity row needs 4 cells: {line}"
            assert (table, cells[0]) not in rows, f"{readme}: setting {cells[0]!r} twice in one table"
            rows[(table, cells[0])] = (cells[1], cells[2])
        else:
            in_table = False
    return rows


def fidelity_rows(readme):
    """(setting, recipe cell) of every row of every fidelity table in ``readme``."""
    return [(setting, recipe) for (_, setting), (_, recipe) in fidelity_tables(readme).items()]


def _checks(readme):
    return [(readme.parent.name, setting, span) for setting, cell in fidelity_rows(readme) for span in SPAN.findall(cell)]


CHECKS = [c for readme in READMES.values() for c in _checks(readme)]


@pytest.mark.parametrize("name", READMES)
def test_every_fidelity_row_is_pinned(name):
    rows = fidelity_rows(READMES[name])
    assert len(rows) >= 8, f"{READMES[name]} has no fidelity table (or a short one)"
    for setting, cell in rows:
        assert SPAN.findall(cell), f"{name}: row '{setting}' has no checked value in 'this recipe'"


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stand-in")
    for name in STAND_IN_FILES:
        (folder / name).write_text("")
    return folder


@functools.lru_cache(maxsize=None)
def _dry_run(folder, script_words, env, stand_in):
    """The commands ``script_words`` prints under DRY_RUN=1 (cached: many rows share one)."""
    script, *args = script_words
    env = dict(env)
    environment = dict(os.environ, DRY_RUN="1", DATA=str(stand_in), BART_DIR=str(stand_in),
                       CHECKPOINT=str(stand_in / "checkpoint.pt"), SAVE_DIR=str(stand_in / "save"))
    environment["PATH"] = str(Path(sys.executable).parent) + os.pathsep + environment["PATH"]
    environment.update(env)
    if script == "evaluate_wikitext103.sh":
        args = [str(stand_in / "checkpoint.pt"), *args]
    r = subprocess.run(["bash", str(REPO / "examples" / folder / script), *args], capture_output=True, text=True,
                       env=environment, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.startswith("dry run: ")]
    assert r.returncode == 0 and lines, f"{script} {args} {env}: no dry run:\n{r.stderr[-2000:]}"
    return tuple(tuple(shlex.split(line[len("dry run: "):])) for line in lines)


def _recipe_command(target, stand_in):
    """The first command ``[VAR=value ...] script.sh [args]`` prints under DRY_RUN=1
    (with ``script.sh>program``, the first that runs ``program``)."""
    folder, words = target
    env = tuple(sorted(tuple(w.split("=", 1)) for w in words if "=" in w))
    script_words = [w for w in words if "=" not in w]
    script, _, program = script_words[0].partition(">")
    commands = _dry_run(folder, (script, *script_words[1:]), env, stand_in)
    return next(c for c in commands if not program or any(Path(w).name == program for w in c[:2]))


def _module_names(folder, filename):
    """The names of the recipe file ``filename`` (in examples/FOLDER or scripts/): those of the module its
    ``main`` is written in, so rdrop_experiments' module for an entry point, else the file's own."""
    for place in (REPO / "examples" / folder, REPO / "scripts"):
        if (place / filename).is_file():
            spec = importlib.util.spec_from_file_location(filename[:-3], place / filename)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.main.__globals__
    raise AssertionError(f"{filename} is neither in examples/{folder} nor in scripts/")


def _flag_pairs(words):
    """[(flag, value or None)] of ``--flag [value]`` words."""
    pairs = []
    for word in words:
        if word.startswith("--"):
            pairs.append((word, None))
        else:
            assert pairs and pairs[-1][1] is None, f"value {word!r} without a flag"
            pairs[-1] = (pairs[-1][0], word)
    return pairs


def _parsed(command):
    """{flag: value or None} as fairseq's parser reads ``--flag value`` and
    ``--flag=value`` words: for a flag given more than once, the last."""
    values = {}
    for i, word in enumerate(command):
        if word.startswith("--"):
            flag, equals, value = word.partition("=")
            if not equals:
                following = command[i + 1] if i + 1 < len(command) else None
                value = None if following is None or following.startswith("--") else following
            values[flag] = value
    return values


def _has(command, flag, value):
    values = _parsed(command)
    return flag in values and (value is None or values[flag] == value)


@pytest.mark.parametrize("folder,setting,span", CHECKS, ids=[f"{f}:{s}:{i}" for i, (f, s, _) in enumerate(CHECKS)])
def test_fidelity_table_value_is_what_the_recipe_does(folder, setting, span, stand_in):
    target, _, check = span.partition(": ")
    assert check, f"{span!r}: expected 'script: check'"
    words = target.split()
    env = dict(w.split("=", 1) for w in words if "=" in w)
    script_words = [w for w in words if "=" not in w]
    if script_words[0].endswith(".py"):
        expression, _, literal = check.rpartition(" == ")
        names = _module_names(folder, script_words[0])
        assert eval(expression, names) == ast.literal_eval(literal), span  # noqa: S307 (project text)
        return
    command = _recipe_command((folder, tuple(words)), stand_in)
    missing = [(f, v) for f, v in _flag_pairs(shlex.split(check)) if not _has(command, f, v)]
    assert not missing, f"{span!r}: {missing} not in {shlex.join(command)}"


def test_a_flag_given_twice_counts_as_its_last_occurrence():
    command = ["fairseq-train", "data", "--lr", "5e-4", "--fp16", "--lr", "1e-3", "--seed=2", "--seed", "3"]
    assert _has(command, "--lr", "1e-3") and not _has(command, "--lr", "5e-4")
    assert _has(command, "--seed", "3") and _has(command, "--fp16", None) and not _has(command, "--cpu", None)


# ------------------------------------------------ the official column, pinned

R_DROP = "dropreg/R-Drop fairseq_src/examples/"
IWSLT_PREPARE = R_DROP + "translation_rdrop/script/prepare-iwslt14.sh"
IWSLT_TRAIN = R_DROP + "translation_rdrop/script/run_train.sh"
IWSLT_INFERENCE = R_DROP + "translation_rdrop/script/run_inference.sh"
WMT_FLAGS = "dropreg/R-Drop issue 19, the authors' comment of 2021-11-20"
WMT_EN_DE_DATA = "facebookresearch/fairseq a75c3092 (pull request 203) examples/translation/prepare-wmt14en2de.sh"
WMT_EN_FR_DATA = "facebookresearch/fairseq examples/translation/prepare-wmt14en2fr.sh"
SCALING_NMT = "facebookresearch/fairseq examples/scaling_nmt/README.md"
LM = R_DROP + "language_model_rdrop/script/"
CNN_DM_TRAIN = R_DROP + "summeration_rdrop/script/run_train.sh"
CNN_DM_INFERENCE = R_DROP + "summeration_rdrop/script/run_inference.py"
CNN_DM_TEXT = "artmatsak/cnn-dailymail make_datafiles.py"
# (README, table, setting, source, as the cell cites it, recipe, the source's values): a
# recipe "[VAR=value ...] script.sh[>program] [args]" with the flags as the source writes
# them, or "module.py" with {expression: literal}.
OFFICIAL = [
    ("translation", 0, "data", IWSLT_PREPARE, "prepare-iwslt14.sh", "prepare_iwslt14.py",
     {"BPE_MERGES": 10000,  # BPE_TOKENS=10000
      "CLEAN": {"min_len": 1, "max_len": 175, "ratio": 1.5},  # $CLEAN -ratio 1.5 ... 1 175
      "VALID_EVERY": 23}),  # awk 'NR%23 == 0'
    ("translation", 0, "model", IWSLT_TRAIN, "run_train.sh", "train_iwslt14.sh",
     "--arch transformer_iwslt_de_en --share-all-embeddings"),
    ("translation", 0, "optimizer", IWSLT_TRAIN, "run_train.sh", "train_iwslt14.sh",
     "--optimizer adam --lr 0.0005 --lr-scheduler inverse_sqrt --weight-decay 0.0001 --warmup-updates 4000 "
     "--warmup-init-lr 1e-07 --adam-betas '(0.9,0.98)'"),
    ("translation", 0, "regularization", IWSLT_TRAIN, "run_train.sh", "train_iwslt14.sh",
     "--label-smoothing 0.1 --dropout 0.3 --reg-alpha 5"),
    ("translation", 0, "batch", IWSLT_TRAIN, "run_train.sh", "NUM_GPUS=1 train_iwslt14.sh",  # CUDA_VISIBLE_DEVICES=0
     "--max-tokens 4096"),
    ("translation", 0, "length, seed, precision", IWSLT_TRAIN, "run_train.sh", "train_iwslt14.sh",
     "--seed 64 --fp16 --max-update 300000"),
    ("translation", 0, "validation", IWSLT_TRAIN, "run_train.sh", "train_iwslt14.sh",
     "--eval-bleu --eval-bleu-args '{\"beam\": 5, \"max_len_a\": 1.2, \"max_len_b\": 10}' --eval-bleu-detok moses "
     "--eval-bleu-remove-bpe --best-checkpoint-metric bleu --maximize-best-checkpoint-metric"),
    ("translation", 0, "evaluation", IWSLT_INFERENCE, "run_inference.sh", "evaluate.sh iwslt14",
     "--beam 5 --remove-bpe"),
    ("translation", 1, "data, En-De", WMT_EN_DE_DATA, "pull request 203", "prepare_wmt14.py",
     {'PROTOCOLS["en-de"]["bpe_merges"]': 32764,  # --scaling18: BPE_TOKENS=32764
      # $CLEAN ... 1 80 before BPE; clean-corpus-n.perl's default ratio is 9 (moses-smt/mosesdecoder)
      'PROTOCOLS["en-de"]["clean"]': {"min_len": 1, "max_len": 80, "ratio": 9.0},
      'PROTOCOLS["en-de"]["clean_before_bpe"]': True,
      'PROTOCOLS["en-de"]["valid"]': "newstest2013"}),  # dev=dev/newstest2013
    ("translation", 1, "data, En-Fr", WMT_EN_FR_DATA, "prepare-wmt14en2fr.sh", "prepare_wmt14.py",
     {'PROTOCOLS["en-fr"]["bpe_merges"]': 40000,  # BPE_TOKENS=40000
      'PROTOCOLS["en-fr"]["valid"]': 1333,  # awk 'NR%1333 == 0'
      # $CLEAN -ratio 1.5 $tmp/bpe.train ... 1 250, after BPE
      'PROTOCOLS["en-fr"]["clean"]': {"min_len": 1, "max_len": 250, "ratio": 1.5},
      'PROTOCOLS["en-fr"]["clean_before_bpe"]': False}),
    ("translation", 1, "model", WMT_FLAGS, "issue 19", "train_wmt14.sh",
     "--arch transformer_vaswani_wmt_en_de_big --share-all-embeddings"),
    ("translation", 1, "optimizer", WMT_FLAGS, "issue 19", "train_wmt14.sh",
     "--optimizer adam --lr 0.001 --lr-scheduler inverse_sqrt --weight-decay 0.0 --warmup-updates 6000 "
     "--warmup-init-lr 1e-07 --adam-betas '(0.9,0.98)'"),
    ("translation", 1, "regularization", WMT_FLAGS, "issue 19", "train_wmt14.sh",
     "--label-smoothing 0.1 --dropout 0.1 --attention-dropout 0.1 --relu-dropout 0.1 --reg-alpha 5"),
    ("translation", 1, "batch", WMT_FLAGS, "issue 19", "NUM_GPUS=8 train_wmt14.sh",
     "--max-tokens 4096 --update-freq 16"),
    ("translation", 1, "length, precision", WMT_FLAGS, "issue 19", "train_wmt14.sh", "--fp16 --max-update 300000"),
    ("translation", 1, "checkpoint averaging", SCALING_NMT, "scaling_nmt/README.md",
     "train_wmt14.sh>average_checkpoints.py", "--num-epoch-checkpoints 10"),
    ("translation", 1, "evaluation, En-De", WMT_FLAGS, "issue 19", "evaluate.sh wmt14-en-de", "--beam 4 --lenpen 0.6"),
    ("language_model", 0, "Transformer model", LM + "train_lm_wiki103_rdrop.sh", "train_lm_wiki103_rdrop.sh",
     "NUM_GPUS=8 train_wikitext103.sh transformer",
     "--arch transformer_lm_gpt --share-decoder-input-output-embed --dropout 0.1"),
    ("language_model", 0, "Transformer criterion", LM + "train_lm_wiki103_rdrop.sh", "train_lm_wiki103_rdrop.sh",
     "NUM_GPUS=8 train_wikitext103.sh transformer", "--reg-alpha 1.0"),
    ("language_model", 0, "Transformer optimizer", LM + "train_lm_wiki103_rdrop.sh", "train_lm_wiki103_rdrop.sh",
     "NUM_GPUS=8 train_wikitext103.sh transformer",
     "--optimizer adam --adam-betas '(0.9, 0.98)' --weight-decay 0.01 --clip-norm 0.0 --lr 0.0005 "
     "--lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07"),
    ("language_model", 0, "Transformer batch", LM + "train_lm_wiki103_rdrop.sh", "train_lm_wiki103_rdrop.sh",
     "NUM_GPUS=8 train_wikitext103.sh transformer",  # CUDA_VISIBLE_DEVICES=0,...,7
     "--tokens-per-sample 512 --sample-break-mode none --max-tokens 2000 --update-freq 16"),
    ("language_model", 0, "Transformer length, precision", LM + "train_lm_wiki103_rdrop.sh",
     "train_lm_wiki103_rdrop.sh", "NUM_GPUS=8 train_wikitext103.sh transformer",
     "--ddp-backend=no_c10d --fp16 --max-update 50000 --skip-invalid-size-inputs-valid-test"),
    ("language_model", 0, "Adaptive Input model and schedule", LM + "train_lm_adaptive_wiki103_rdrop.sh",
     "train_lm_adaptive_wiki103_rdrop.sh", "NUM_GPUS=8 train_wikitext103.sh adaptive",
     "--arch transformer_lm_wiki103 --lr 1.0 --t-mult 2 --lr-period-updates 270000 --lr-scheduler cosine "
     "--lr-shrink 0.75 --warmup-updates 16000 --warmup-init-lr 1e-07 --stop-min-lr 1e-09 --optimizer nag "
     "--min-lr 1e-4 --clip-norm 0.1"),  # --min-lr ${LR}, LR=1e-4
    ("language_model", 0, "Adaptive Input criterion", LM + "train_lm_adaptive_wiki103_rdrop.sh",
     "train_lm_adaptive_wiki103_rdrop.sh", "NUM_GPUS=8 train_wikitext103.sh adaptive", "--reg-alpha 1.0"),
    ("language_model", 0, "Adaptive Input batch", LM + "train_lm_adaptive_wiki103_rdrop.sh",
     "train_lm_adaptive_wiki103_rdrop.sh", "NUM_GPUS=8 train_wikitext103.sh adaptive",
     "--max-tokens 3072 --update-freq 3 --tokens-per-sample 3072"),
    ("language_model", 0, "Adaptive Input length, precision", LM + "train_lm_adaptive_wiki103_rdrop.sh",
     "train_lm_adaptive_wiki103_rdrop.sh", "NUM_GPUS=8 train_wikitext103.sh adaptive", "--max-update 320000 --fp16"),
    ("language_model", 0, "Adaptive Input length, precision", LM + "train_lm_adaptive_wiki103.sh",
     "train_lm_adaptive_wiki103.sh", "NUM_GPUS=8 RDROP_ALPHA=0 train_wikitext103.sh adaptive", "--max-update 286000"),
    ("language_model", 0, "evaluation", LM + "evaluate_lm_wiki103.sh", "evaluate_lm_wiki103.sh",
     "evaluate_wikitext103.sh", "--max-sentences 2 --tokens-per-sample 512 --context-window 400"),
    ("summarization", 0, "text", CNN_DM_TEXT, "make_datafiles.py", "make_cnn_dm.py",
     {'with_period("Lead line")': "Lead line .",  # fix_missing_period: line + " ."
      'with_period("Done!")': "Done!",  # "!" is in END_TOKENS
      # get_art_abs: every line after the first @highlight is a highlight, joined by " "
      'parse_story("Lead.\\n@highlight\\nFirst\\ngoes on\\n\\n@highlight\\nSecond!")':
          ("Lead.", "First . goes on . Second!")}),
    ("summarization", 0, "model and restore", CNN_DM_TRAIN, "run_train.sh", "NUM_GPUS=4 train_cnn_dm.sh",
     "--restore-file --truncate-source --layernorm-embedding --share-all-embeddings "
     "--share-decoder-input-output-embed --reset-optimizer --reset-dataloader --reset-meters --arch bart_large"),
    ("summarization", 0, "criterion", CNN_DM_TRAIN, "run_train.sh", "NUM_GPUS=4 train_cnn_dm.sh",
     "--reg-alpha 0.7 --label-smoothing 0.1"),
    ("summarization", 0, "optimizer", CNN_DM_TRAIN, "run_train.sh", "NUM_GPUS=4 train_cnn_dm.sh",
     "--dropout 0.1 --attention-dropout 0.1 --weight-decay 0.01 --optimizer adam --adam-betas '(0.9, 0.999)' "
     "--adam-eps 1e-08 --clip-norm 0.1"),
    ("summarization", 0, "schedule", CNN_DM_TRAIN, "run_train.sh", "NUM_GPUS=4 train_cnn_dm.sh",
     "--lr-scheduler polynomial_decay --lr 3e-05 --total-num-update 20000 --warmup-updates 500"),
    ("summarization", 0, "batch", CNN_DM_TRAIN, "run_train.sh", "NUM_GPUS=4 train_cnn_dm.sh",  # 4 GPUs
     "--max-tokens 1024 --required-batch-size-multiple 1 --update-freq 16"),
    ("summarization", 0, "precision", CNN_DM_TRAIN, "run_train.sh", "NUM_GPUS=4 train_cnn_dm.sh",
     "--fp16 --skip-invalid-size-inputs-valid-test --find-unused-parameters"),
    ("summarization", 0, "inference", CNN_DM_INFERENCE, "run_inference.py", "generate_cnn_dm.py",
     {"CNN_DM": {"beam": 4, "lenpen": 2.0, "max_len_b": 140, "min_len": 55, "no_repeat_ngram_size": 3},
      "BATCH_SIZE": 32,  # bsz = 32
      "FP16": True}),  # bart.half()
    ("summarization", 0, "ROUGE", "dropreg/R-Drop README.md", "R-Drop `README.md`", "rouge.py", {}),
]
# The official flag names this recipe spells differently, and official values of another name.
RENAMED = {"--reg-alpha": "--rdrop-alpha", "--relu-dropout": "--activation-dropout", "--max-sentences": "--batch-size"}
RENAMED_VALUES = {("--ddp-backend", "no_c10d"): "legacy_ddp"}
NOT_PUBLISHED = "not published"


def _same_value(official, recipe):
    if official == recipe or (official or "").replace(" ", "") == (recipe or "").replace(" ", ""):
        return True
    try:
        return float(official) == float(recipe)
    except (TypeError, ValueError):
        return False


def _states(cell, value):
    """Whether a README cell writes the number ``value`` (as the source does, or with thousands commas)."""
    forms = {value} | ({f"{int(value):,}"} if re.fullmatch(r"\d{4,}", value) else set())
    return any(re.search(rf"(?<![\d.]){re.escape(form)}(?![\d])", cell) for form in forms)


@pytest.mark.parametrize("name", READMES)
def test_every_official_value_has_a_source_or_says_it_was_not_published(name):
    pinned = {(table, setting) for folder, table, setting, *_ in OFFICIAL if folder == name}
    for (table, setting), (official, _) in fidelity_tables(READMES[name]).items():
        assert (table, setting) in pinned or NOT_PUBLISHED in official, (
            f"{name}: row {setting!r}: its official value is neither pinned in OFFICIAL nor '{NOT_PUBLISHED}'")
    assert pinned <= set(fidelity_tables(READMES[name])), f"{name}: OFFICIAL names a row the README lacks"


@pytest.mark.parametrize("folder,table,setting,source,cited,recipe,values", OFFICIAL,
                         ids=[f"{f}:{t}:{s}:{Path(src).name}" for f, t, s, src, *_ in OFFICIAL])
def test_official_value_is_the_sources_stated_in_the_readme_and_used_by_the_recipe(
        folder, table, setting, source, cited, recipe, values, stand_in):
    official_cell, _ = fidelity_tables(READMES[folder])[(table, setting)]
    assert cited in official_cell, f"{folder}: row {setting!r} does not cite {cited!r} ({source})"
    if ".sh" not in recipe:
        names = _module_names(folder, recipe)
        for expression, literal in values.items():
            assert eval(expression, names) == literal, f"{recipe}: {expression} ({source})"  # noqa: S307
        return
    command = _parsed(_recipe_command((folder, tuple(recipe.split())), stand_in))
    for flag, value in _parsed(shlex.split(values)).items():
        ours = RENAMED.get(flag, flag)
        assert ours in command, f"{recipe}: {flag} of {source} missing"
        if value is None:
            continue
        if re.fullmatch(r"[\d.e+-]+", value):
            assert _states(official_cell, value), f"{folder}: row {setting!r} does not state {flag} {value} ({source})"
        expected = RENAMED_VALUES.get((flag, value), value)
        assert _same_value(expected, command[ours]), f"{recipe}: {ours} {command[ours]}, {source}: {flag} {value}"
