"""The fidelity tables of the three recipe READMEs pin the recipes' command lines.

Each table has the columns "setting | paper / official value (source) | this
recipe | note". Every code span in the "this recipe" column is a check:

* ``[VAR=value ...] script.sh [args]: --flag [value] ...`` runs the script with
  ``DRY_RUN=1`` (and the variables) on stand-in data, and every flag, with its
  value where one is given, must be in the fairseq command line it prints;
* ``module.py: expression == literal`` evaluates the expression in that
  recipe module (or one of scripts/) and compares it with the literal.

So a table that says one thing while a script does another fails here, in
either direction of a later edit.
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

from .cli import REPO

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


def fidelity_rows(readme):
    """(setting, recipe cell) of every row of every fidelity table in ``readme``."""
    rows, in_table = [], False
    for line in readme.read_text(encoding="utf-8").splitlines():
        if HEADER.match(line):
            in_table = True
            continue
        if in_table and line.startswith("| ---"):
            continue
        if in_table and line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            assert len(cells) == 4, f"{readme}: a fidelity row needs 4 cells: {line}"
            rows.append((cells[0], cells[2]))
        else:
            in_table = False
    return rows


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
    """The command line ``script_words`` prints under DRY_RUN=1 (cached: many rows share one)."""
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
    return shlex.split(lines[0][len("dry run: "):])


def _module(folder, filename):
    for place in (REPO / "examples" / folder, REPO / "scripts"):
        if (place / filename).is_file():
            sys.path.insert(0, str(place))
            spec = importlib.util.spec_from_file_location(filename[:-3], place / filename)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
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


def _has(command, flag, value):
    positions = [i for i, word in enumerate(command) if word == flag]
    if value is None:
        return bool(positions)
    return any(i + 1 < len(command) and command[i + 1] == value for i in positions)


@pytest.mark.parametrize("folder,setting,span", CHECKS, ids=[f"{f}:{s}:{i}" for i, (f, s, _) in enumerate(CHECKS)])
def test_fidelity_table_value_is_what_the_recipe_does(folder, setting, span, stand_in):
    target, _, check = span.partition(": ")
    assert check, f"{span!r}: expected 'script: check'"
    words = target.split()
    env = dict(w.split("=", 1) for w in words if "=" in w)
    script_words = [w for w in words if "=" not in w]
    if script_words[0].endswith(".py"):
        expression, _, literal = check.rpartition(" == ")
        module = _module(folder, script_words[0])
        assert eval(expression, vars(module)) == ast.literal_eval(literal), span  # noqa: S307 (project text)
        return
    command = _dry_run(folder, tuple(script_words), tuple(sorted(env.items())), stand_in)
    missing = [(f, v) for f, v in _flag_pairs(shlex.split(check)) if not _has(command, f, v)]
    assert not missing, f"{span!r}: {missing} not in {shlex.join(command)}"
