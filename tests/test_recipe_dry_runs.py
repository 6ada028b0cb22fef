"""``DRY_RUN=1`` of every recipe script prints every command it would run and runs none.

A dry run is how a user checks a recipe before spending GPU hours, so it must be
safe anywhere: it writes nothing (an existing results folder stays byte for
byte the same, no output file is even truncated), it needs no data, torch,
fairseq or virtual environment, and it prints each command, in its GPU form
with ``NUM_GPUS`` honoured, as one shell-quoted line after ``dry run: ``.
"""

import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from .helpers.fairseq_runs import REPO

PINNED = Path(__file__).parent / "data" / "recipe_dry_runs.json"
MT, LM, SUM = "translation", "language_model", "summarization"
SMOKE_MT_DATA = ["mkdir"] + 2 * ["head", "sed", "head", "python mt_prep.py", "python mt_prep.py",
                                 "python mt_prep.py", "python -c"] + ["fairseq-preprocess", "cp"]
BPE = "python -m fairseq.examples.roberta.multiprocessing_bpe_encoder"
CNN_DM_BINARIZE = 6 * [BPE] + ["rm", "fairseq-preprocess", "rm", "mv", "cp"]
CNN_DM_EVALUATE = ["python generate_cnn_dm.py", "mv", "python rouge.py", "python -c"]
# (folder, script, arguments, environment, the commands a run on nothing prepared prints, in order)
DRY_RUNS = [
    (MT, "prepare_iwslt14.sh", [], {}, ["python prepare_iwslt14.py", "fairseq-preprocess"]),
    (MT, "prepare_iwslt14.sh", ["--smoke"], {}, SMOKE_MT_DATA),
    (MT, "prepare_wmt14.sh", ["en-de"], {}, ["python prepare_wmt14.py", "fairseq-preprocess", "cp"]),
    (MT, "prepare_wmt14.sh", ["en-fr"], {}, ["python prepare_wmt14.py", "fairseq-preprocess", "cp"]),
    (MT, "prepare_wmt14.sh", ["en-de", "--smoke"], {}, SMOKE_MT_DATA),
    (MT, "train_iwslt14.sh", [], {}, ["fairseq-train"]),
    (MT, "train_iwslt14.sh", [], {"SMOKE": "1"},
     SMOKE_MT_DATA + ["fairseq-train", "fairseq-generate", "python compound_split_bleu.py"]),
    (MT, "train_wmt14.sh", [], {}, ["fairseq-train", "python average_checkpoints.py"]),
    (MT, "train_wmt14.sh", [], {"PAIR": "en-fr", "AVG_CHECKPOINTS": "0"}, ["fairseq-train"]),
    (MT, "train_wmt14.sh", [], {"SMOKE": "1"},
     SMOKE_MT_DATA + ["fairseq-train", "python average_checkpoints.py", "fairseq-generate",
                      "python compound_split_bleu.py"]),
    (MT, "evaluate.sh", ["iwslt14"], {}, ["fairseq-generate", "python compound_split_bleu.py"]),
    (MT, "evaluate.sh", ["wmt14-en-de"], {}, ["fairseq-generate", "python compound_split_bleu.py"]),
    (MT, "evaluate.sh", ["wmt14-en-fr"], {"GEN_OUT": "{save}/gen.out"}, ["python compound_split_bleu.py"]),
    (LM, "prepare_wikitext103.sh", [], {},
     ["mkdir", "python -c", "mv", "python -m zipfile", "fairseq-preprocess"]),
    (LM, "prepare_wikitext103.sh", ["--zip", "{work}/wikitext-103-v1.zip"], {},
     ["mkdir", "python -m zipfile", "fairseq-preprocess"]),
    (LM, "prepare_wikitext103.sh", ["--smoke"], {}, ["mkdir", "python -c", "head", "head", "fairseq-preprocess"]),
    (LM, "train_wikitext103.sh", ["transformer"], {}, ["fairseq-train"]),
    (LM, "train_wikitext103.sh", ["adaptive"], {}, ["fairseq-train"]),
    (LM, "train_wikitext103.sh", ["transformer"], {"SMOKE": "1"},
     ["mkdir", "python -c", "head", "head", "fairseq-preprocess", "fairseq-train", "fairseq-eval-lm",
      "fairseq-eval-lm"]),
    (LM, "evaluate_wikitext103.sh", ["{save}/checkpoint_best.pt"], {}, ["fairseq-eval-lm", "fairseq-eval-lm"]),
    (SUM, "prepare_cnn_dm.sh", [], {},
     ["mkdir"] + 9 * ["curl", "mv"] + ["mkdir", "tar", "tar", "tar", "python make_cnn_dm.py"] + CNN_DM_BINARIZE),
    (SUM, "prepare_cnn_dm.sh", ["--smoke"], {}, ["mkdir", "python -"] + CNN_DM_BINARIZE),
    (SUM, "train_cnn_dm.sh", [], {}, ["fairseq-train"]),
    (SUM, "train_cnn_dm.sh", [], {"SMOKE": "1"},
     ["mkdir", "python -"] + CNN_DM_BINARIZE + ["fairseq-train", "cp", "fairseq-train"] + CNN_DM_EVALUATE),
    (SUM, "evaluate_cnn_dm.sh", [], {}, CNN_DM_EVALUATE),
    (SUM, "evaluate_cnn_dm.sh", [], {"HYPO": "{save}/test.hypo"}, ["python rouge.py", "python -c"]),
]
IDS = [" ".join([script, *args, *(f"{k}={v}" for k, v in env.items())]) for _, script, args, env, _ in DRY_RUNS]

GENERATE_OUTPUT = (
    "S-0\tein kleiner test .\nT-0\ta small test .\nH-0\t-0.4127\ta small test .\n"
    "D-0\t-0.4127\ta small test .\nP-0\t-0.2311 -0.5013 -0.4442 -0.4742\n"
    "2026-11-30 12:00:00 | INFO | fairseq_cli.generate | Translated 1 sentences (5 tokens) in 0.1s\n"
    "Generate test with beam=5: BLEU4 = 100.00, 100.0/100.0/100.0/100.0 (BP=1.000, ratio=1.000, syslen=4, reflen=4)\n"
)
EVAL_LM_OUTPUT = "2026-11-30 12:00:00 | INFO | fairseq_cli.eval_lm | Loss (base 2): 4.4512, Perplexity: 21.88\n"
# An existing results folder: everything the scripts read or write under their
# output variables, with real-looking content.
RESULTS = {
    "save/checkpoint_best.pt": b"PK\x03\x04 a torch zip archive " + bytes(range(256)),
    "save/checkpoint_last.pt": b"PK\x03\x04 another one " + bytes(range(255, -1, -1)),
    "save/checkpoint_avg10.pt": b"PK\x03\x04 the average " + bytes(range(0, 256, 3)),
    "save/generate-test.checkpoint_best.beam5.txt": GENERATE_OUTPUT,
    "save/generate-test.checkpoint_best.beam4.txt": GENERATE_OUTPUT.replace("beam=5", "beam=4"),
    "save/gen.out": GENERATE_OUTPUT,
    "save/eval_lm.checkpoint_best.valid.txt": EVAL_LM_OUTPUT,
    "save/eval_lm.checkpoint_best.test.txt": EVAL_LM_OUTPUT.replace("4.4512", "4.4107"),
    "save/test.checkpoint_best.hypo": "a man was arrested . police say he fled .\n",
    "save/test.hypo": "a man was arrested .\n",
    "save/test.checkpoint_best.rouge.json": json.dumps({"scores": {"rouge1": {"fmeasure": 44.5}}}),
    "data/dict.txt": "the 100\n, 90\n",
    "data/dict.de.txt": "die 100\n, 90\n",
    "data/dict.en.txt": "the 100\n, 90\n",
    "data/dict.source.txt": "50256 100\n",
    "data/dict.target.txt": "50256 100\n",
    "data/test.source": "An article .\n",
    "data/test.target": "A summary .\n",
    "data/test.raw.de": "Ein Satz.\n",
    "data/test.raw.fr": "Une phrase.\n",
    "text/train.de": "ein satz .\n",
    "text/test.raw.en": "A sentence.\n",
    "work/wikitext-103-v1.zip": b"PK\x05\x06" + bytes(18),
    "work/url_lists/all_test.txt": "http://www.cnn.com/2014/story.html\n",
    "work/text/test.source": "An article .\n",
    "bart/model.pt": b"PK\x03\x04 bart.large " + bytes(64),
}
for _split in ("train", "valid", "test"):
    RESULTS[f"data/{_split}.bin"] = bytes(range(16))
    for _pair in ("de-en.de", "en-de.en", "en-fr.en", "source-target.source"):
        RESULTS[f"data/{_split}.{_pair}.bin"] = bytes(range(16))


def _environment(results, bin_dirs, extra):
    """Every input and output of the scripts inside ``results``; no virtual environment to find or build."""
    env = {
        "PATH": os.pathsep.join([*map(str, bin_dirs), "/usr/bin", "/bin"]), "HOME": os.environ.get("HOME", "/tmp"),
        "DRY_RUN": "1", "NUM_GPUS": "2",
        # setup_env.sh would build a virtual environment here, with a python that fails at once
        "RDROP_VENV": str(results.parent / "venv"), "PYTHON": "/bin/false",
        "DATA": str(results / "data"), "SAVE_DIR": str(results / "save"), "TEXT": str(results / "text"),
        "ORIG": str(results / "orig"), "WORK": str(results / "work"), "BART_DIR": str(results / "bart"),
        "CHECKPOINT": str(results / "save" / "checkpoint_best.pt"),
    }
    places = {"save": results / "save", "work": results / "work"}
    env.update({k: v.format(**places) for k, v in extra.items()})
    return env, places


def _run(repo, folder, script, args, extra, results, bin_dirs, **output):
    """A dry run of the checkout ``repo``'s recipe in the environment of ``_environment``, its output
    captured as ``output`` says; it must succeed."""
    env, places = _environment(results, bin_dirs, extra)
    r = subprocess.run(["bash", str(repo / "examples" / folder / script), *(a.format(**places) for a in args)],
                       env=env, timeout=60, **output)
    assert r.returncode == 0, (r.stderr or r.stdout)[-3000:]
    return r


def _dry_run(folder, script, args, extra, results, bin_dirs=()):
    r = _run(REPO, folder, script, args, extra, results, bin_dirs, capture_output=True, text=True)
    return [shlex.split(line[len("dry run: "):]) for line in r.stderr.splitlines() if line.startswith("dry run: ")]


def dry_run_output(repo, folder, script, args, extra, work):
    """A dry run's stdout and stderr as one stream, by the recipes of the checkout ``repo``, nothing prepared,
    with an ``nproc`` that says 4 (the WORKERS default, the same on every machine); the paths of ``work`` and
    ``repo`` are written ``<work>`` and ``<repo>``."""
    stand_ins = work / "bin"
    stand_ins.mkdir()
    (stand_ins / "nproc").write_text("#!/bin/sh\necho 4\n")
    (stand_ins / "nproc").chmod(0o755)
    r = _run(repo, folder, script, args, extra, work / "results", [stand_ins],
             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return r.stdout.decode().replace(str(work), "<work>").replace(str(repo), "<repo>")


def _program(words):
    """``fairseq-train``, ``python rouge.py``, ``python -m zipfile``, ``python -c``: what a command runs."""
    name = Path(words[0]).name
    if name != "python":
        return name
    if words[1] == "-m":
        return f"python -m {words[2]}"
    return f"python {words[1] if words[1].startswith('-') else Path(words[1]).name}"


def _checksums(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    for name, content in RESULTS.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return folder


@pytest.fixture
def tripwires(tmp_path):
    """python, fairseq's tools, torchrun and curl that note any call in ``calls`` and fail."""
    folder, calls = tmp_path / "tripwires", tmp_path / "calls"
    folder.mkdir()
    for name in ("python", "python3", "fairseq-train", "fairseq-preprocess", "fairseq-generate", "fairseq-eval-lm",
                 "fairseq-score", "torchrun", "curl", "tar"):
        (folder / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 1\n')
        (folder / name).chmod(0o755)
    return folder, calls


@pytest.mark.parametrize("folder,script,args,env,expected", DRY_RUNS, ids=IDS)
def test_dry_run_leaves_an_existing_results_folder_byte_identical(folder, script, args, env, expected, results,
                                                                  tripwires):
    before = _checksums(results)
    _dry_run(folder, script, args, env, results, bin_dirs=[tripwires[0]])
    assert _checksums(results) == before
    assert not tripwires[1].exists(), f"the dry run ran: {tripwires[1].read_text()}"


@pytest.mark.parametrize("folder,script,args,env,expected", DRY_RUNS, ids=IDS)
def test_dry_run_without_data_fairseq_or_venv_prints_every_command(folder, script, args, env, expected, tmp_path):
    """A bare PATH (no fairseq, torch or .venv) and nothing prepared: every command is listed, nothing made."""
    results = tmp_path / "results"
    commands = _dry_run(folder, script, args, env, results)
    assert [_program(c) for c in commands] == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the dry run created files or a virtual environment"


def test_dry_run_of_evaluate_wikitext103_prints_every_subset(tmp_path):
    commands = _dry_run(LM, "evaluate_wikitext103.sh", ["{save}/checkpoint_best.pt"], {"SUBSETS": "valid test train"},
                        tmp_path / "results")
    assert [c[c.index("--gen-subset") + 1] for c in commands] == ["valid", "test", "train"]
    outputs = [c[c.index("&>") + 1] for c in commands]  # the log holds fairseq's output and errors
    assert outputs == [str(tmp_path / "results" / "save" / f"eval_lm.checkpoint_best.{s}.txt")
                       for s in ("valid", "test", "train")]


def test_dry_run_of_evaluate_names_the_translation_file_it_would_write(tmp_path):
    generate, score = _dry_run(MT, "evaluate.sh", ["iwslt14"], {}, tmp_path / "results")
    gen = str(tmp_path / "results" / "save" / "generate-test.checkpoint_best.beam5.txt")
    assert generate[-2:] == [">", gen] and score[2] == gen


@pytest.mark.parametrize("folder,script,args", [(MT, "train_iwslt14.sh", []), (MT, "train_wmt14.sh", []),
                                                 (LM, "train_wikitext103.sh", ["transformer"]),
                                                 (SUM, "train_cnn_dm.sh", [])])
def test_dry_run_prints_the_gpu_command_line_for_num_gpus(folder, script, args, tmp_path):
    """On this (GPU-less or GPU-hiding) machine too: NUM_GPUS CUDA processes in fp16, never --cpu."""
    for gpus in ("1", "4"):
        (train,) = [c for c in _dry_run(folder, script, args, {"NUM_GPUS": gpus}, tmp_path / "results")
                    if _program(c) == "fairseq-train"]
        assert train[train.index("--distributed-world-size") + 1] == gpus
        assert "--fp16" in train and "--cpu" not in train


@pytest.mark.parametrize("folder,script,args", [(MT, "evaluate.sh", ["wmt14-en-de"]),
                                                 (LM, "evaluate_wikitext103.sh", ["{save}/checkpoint_best.pt"])])
def test_dry_run_prints_the_gpu_evaluation(folder, script, args, tmp_path):
    commands = _dry_run(folder, script, args, {}, tmp_path / "results")
    assert commands and not any("--cpu" in c for c in commands)


@pytest.mark.parametrize("name,run", zip(IDS, DRY_RUNS), ids=IDS)
def test_dry_run_output_is_byte_identical_to_the_pinned_one(name, run, tmp_path):
    """PINNED holds every dry run's output from the recipes before their library moved to examples/common.sh
    (commit cee1bf1, through ``dry_run_output`` with that checkout as ``repo``): the move and the library's
    functions changed no byte a user sees."""
    folder, script, args, env, _ = run
    assert dry_run_output(REPO, folder, script, args, env, tmp_path) == json.loads(PINNED.read_text())[name]
