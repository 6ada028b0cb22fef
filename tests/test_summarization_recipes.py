"""Checks of the CNN/DailyMail recipe in examples/summarization/ that run offline.

Downloads are replaced by files put in place beforehand (the scripts fetch only
what is missing): story archives written here, and a small GPT-2-format BPE
(the 256 byte symbols plus two merges) standing in for GPT-2's 50k vocabulary.
"""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from rdrop_experiments import cnn_dm

from .helpers.fairseq_runs import REPO, assert_script_fails_fast, assert_shell_script_parses_and_is_strict

EXAMPLES = REPO / "examples" / "summarization"
SCRIPTS = [EXAMPLES / f"{name}.sh" for name in ("prepare_cnn_dm", "train_cnn_dm", "evaluate_cnn_dm", "run_demo")]
VENV_BIN = str(Path(sys.executable).parent)

STORY = """Lead line of the article without a period

Second line ends properly.

@highlight

First highlight

@highlight

Second highlight!
"""
ARTICLES = {
    "train": ["the cat sat on the mat. the dog ran to the park.", "there is the thing in the house!"],
    "val": ["the weather is fine today."],
    "test": ["the end of the story is near.", "the other story is longer than the first one."],
}


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def _bash(script, *args, **env):
    return subprocess.run(["bash", str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True,
                          env=_env(**env), timeout=600)


# ------------------------------------------------------------- story parsing


def test_story_splits_article_from_highlights_and_adds_missing_periods():
    # fix_missing_period appends " ." (space, period), as the standard script does.
    article, summary = cnn_dm.parse_story(STORY)
    assert article == "Lead line of the article without a period . Second line ends properly."
    assert summary == "First highlight . Second highlight!"


def test_story_without_article_text_gives_empty_article():
    assert cnn_dm.parse_story("@highlight\n\nOnly a highlight\n") == ("", "Only a highlight .")


def test_a_highlight_that_goes_on_over_several_lines_keeps_every_line():
    # make_datafiles.py: every non-empty line after the first @highlight is highlight text.
    story = "Lead line.\n\n@highlight\n\nFirst highlight\nwhich goes on here\n\n@highlight\n\nSecond one!\n"
    assert cnn_dm.parse_story(story) == ("Lead line.", "First highlight . which goes on here . Second one!")


def test_a_highlight_marker_is_a_line_starting_with_it_and_no_line_mentioning_it_gets_a_period():
    story = "A line about @highlight markers\n@highlights\nThe highlight\n"
    assert cnn_dm.parse_story(story) == ("A line about @highlight markers", "The highlight .")


def test_story_lines_are_the_ones_reading_the_file_gives():
    # \r and \r\n end a line as in a file read in text mode; U+2028 does not.
    assert cnn_dm.parse_story("One\r\nTwo\u2028half\r@highlight\rH\n") == ("One . Two\u2028half .", "H .")


def test_story_file_is_named_by_the_sha1_of_its_url():
    url = "http://www.cnn.com/2014/01/01/world/example/index.html"
    assert cnn_dm.story_name(url) == hashlib.sha1(url.encode()).hexdigest() + ".story"


# -------------------------------------------------------- fake downloads


def _story(article, highlight):
    return f"{article}\n\n@highlight\n\n{highlight}\n"


def _put_downloads(work: Path):
    """Story archives, URL lists and a small GPT-2 BPE where prepare_cnn_dm.sh looks for them."""
    from fairseq.data.encoders.gpt2_bpe_utils import bytes_to_unicode

    (work / "url_lists").mkdir(parents=True)
    stories = {"cnn": work / "src" / "cnn" / "stories", "dailymail": work / "src" / "dailymail" / "stories"}
    for folder in stories.values():
        folder.mkdir(parents=True)
    for split, articles in ARTICLES.items():
        urls = []
        for index, article in enumerate(articles):
            source = "cnn" if index % 2 == 0 else "dailymail"
            url = f"http://{source}.example/{split}/{index}"
            (stories[source] / cnn_dm.story_name(url)).write_text(_story(article, f"summary {index} of {split}"))
            urls.append(url)
        # A story without article text keeps an empty line.
        empty = f"http://cnn.example/{split}/empty"
        (stories["cnn"] / cnn_dm.story_name(empty)).write_text("@highlight\n\nno article\n")
        (work / "url_lists" / f"all_{split}.txt").write_text("\n".join(urls + [empty]) + "\n")
    for source in stories:
        with tarfile.open(work / f"{source}_stories.tgz", "w:gz") as tar:
            tar.add(work / "src" / source, arcname=source)
    shutil.rmtree(work / "src")

    bpe = work / "gpt2_bpe"
    bpe.mkdir()
    symbols = list(bytes_to_unicode().values()) + ["th", "the"]
    (bpe / "encoder.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    (bpe / "vocab.bpe").write_text("#version: 0.2\nt h\nth e\n")
    (bpe / "dict.txt").write_text("".join(f"{i} {1000 - i}\n" for i in range(len(symbols))))
    return bpe


def _prepare(tmp_path):
    work, data, bart = tmp_path / "work", tmp_path / "data-bin", tmp_path / "bart.large"
    bpe = _put_downloads(work)
    bart.mkdir()
    (bart / "model.pt").write_text("pretrained weights stand-in")
    r = _bash("prepare_cnn_dm.sh", WORK=str(work), DATA=str(data), BART_DIR=str(bart), WORKERS="1")
    assert r.returncode == 0, r.stderr[-3000:]
    return work, data, bpe, r


def test_prepare_writes_text_and_binarized_data_that_decodes_back(tmp_path):
    from fairseq.data import Dictionary, data_utils
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    work, data, bpe, r = _prepare(tmp_path)
    assert "downloading" not in r.stderr  # everything was in place
    # The story without article text keeps its (empty) line: every URL of a
    # split has a line, so the test set keeps all 11,490 articles.
    assert "train: 3 stories, 1 of them without article text or highlights (kept, empty)" in r.stdout
    for split, articles in ARTICLES.items():
        assert (work / "text" / f"{split}.source").read_text().splitlines() == articles + [""]
        assert (work / "text" / f"{split}.target").read_text().splitlines() == [
            f"summary {i} of {split} ." for i in range(len(articles))] + ["no article ."]
    assert (data / "test.target").read_text() == (work / "text" / "test.target").read_text()

    dictionary = Dictionary.load(str(data / "dict.source.txt"))
    encoder = get_encoder(str(bpe / "encoder.json"), str(bpe / "vocab.bpe"))
    dataset = data_utils.load_indexed_dataset(str(data / "train.source-target.source"), dictionary)
    decoded = [encoder.decode([int(t) for t in dictionary.string(dataset[i]).split()]) for i in range(len(dataset))]
    assert decoded == ARTICLES["train"] + [""]
    # The merges were applied: "the" is one BPE symbol (id 257, after the 256
    # bytes and "th"), not three bytes.
    assert dictionary.string(dataset[0]).split()[0] == str(257)


# --------------------------------------------------------- scripts, inputs


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse_and_are_strict(script):
    assert_shell_script_parses_and_is_strict(script)


MISSING = "/nonexistent/rdrop-data"
FAIL_FAST = [
    ("train_cnn_dm.sh", [], {"DATA": MISSING}, MISSING + "/dict.source.txt"),
    ("evaluate_cnn_dm.sh", [], {"DATA": MISSING}, MISSING + "/test.target"),
    ("prepare_cnn_dm.sh", [], {"WORKERS": "many"}, "WORKERS must be a positive integer"),
]


@pytest.mark.parametrize("script,args,env,message", FAIL_FAST, ids=[f"{s}-{i}" for i, (s, *_r) in enumerate(FAIL_FAST)])
def test_shell_scripts_fail_fast_on_bad_input(script, args, env, message):
    assert "error" in assert_script_fails_fast(EXAMPLES / script, args, env, message)


FAKE_TRAIN = """#!{python}
import json, sys
print(json.dumps(sys.argv[1:]))
"""


def _fake_train_env(tmp_path, **env):
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir(parents=True)
    (fake_bin / "fairseq-train").write_text(FAKE_TRAIN.format(python=sys.executable))
    (fake_bin / "fairseq-train").chmod(0o755)
    data, bart = tmp_path / "data", tmp_path / "bart"
    data.mkdir()
    bart.mkdir()
    for name in ("dict.source.txt", "dict.target.txt", "train.source-target.source.bin",
                 "valid.source-target.source.bin"):
        (data / name).write_text("")
    (bart / "model.pt").write_text("")
    e = _env(DATA=str(data), BART_DIR=str(bart), SAVE_DIR=str(tmp_path / "ckpt"), **env)
    e["PATH"] = f"{fake_bin}{os.pathsep}{e['PATH']}"
    return e


def _train_args(tmp_path, *extra, **env):
    r = subprocess.run(["bash", str(EXAMPLES / "train_cnn_dm.sh"), *extra], capture_output=True, text=True,
                       env=_fake_train_env(tmp_path, **env))
    return r, (json.loads(r.stdout.splitlines()[0]) if r.returncode == 0 else None)


def _flag(args, name):
    return args[args.index(name) + 1]


@pytest.mark.usefixtures("cuda_hidden")  # the CPU fallback, on a GPU machine too
def test_train_command_line_is_the_papers_recipe(tmp_path):
    r, args = _train_args(tmp_path, "--log-interval", "7")
    assert r.returncode == 0, r.stderr[-3000:]
    for flag, value in [("--arch", "bart_large"), ("--task", "translation"), ("--source-lang", "source"),
                        ("--target-lang", "target"), ("--criterion", "label_smoothed_cross_entropy_rdrop"),
                        ("--rdrop-alpha", "0.7"), ("--label-smoothing", "0.1"), ("--dropout", "0.1"),
                        ("--attention-dropout", "0.1"), ("--weight-decay", "0.01"), ("--lr", "3e-05"),
                        ("--lr-scheduler", "polynomial_decay"), ("--total-num-update", "20000"),
                        ("--max-update", "20000"), ("--warmup-updates", "500"), ("--clip-norm", "0.1"),
                        ("--adam-betas", "(0.9, 0.999)"), ("--adam-eps", "1e-08"),
                        ("--max-tokens", "1024"), ("--update-freq", "64"), ("--seed", "1")]:
        assert _flag(args, flag) == value, flag
    for switch in ("--truncate-source", "--layernorm-embedding", "--share-all-embeddings",
                   "--share-decoder-input-output-embed", "--reset-optimizer", "--reset-dataloader",
                   "--reset-meters", "--find-unused-parameters", "--skip-invalid-size-inputs-valid-test"):
        assert switch in args, switch
    assert _flag(args, "--required-batch-size-multiple") == "1"
    assert _flag(args, "--restore-file") == str(tmp_path / "bart" / "model.pt")
    assert Path(_flag(args, "--user-dir")) == REPO / "rdrop_fairseq"
    assert "--cpu" in args and "--fp16" not in args  # no CUDA here
    assert args[-2:] == ["--log-interval", "7"]  # passthrough last, so it can override
    assert "1 GPU(s) x 1024 tokens x update-freq 64 = 65536 tokens per update" in r.stderr


@pytest.mark.usefixtures("cuda_hidden")  # the CPU fallback, on a GPU machine too
def test_train_keeps_the_papers_tokens_per_update_when_max_tokens_changes(tmp_path):
    r, args = _train_args(tmp_path, MAX_TOKENS="3000", RDROP_ALPHA="0")
    assert r.returncode == 0, r.stderr[-3000:]
    # ceil(65536 / 3000) = 22 steps of accumulation: 66,000 tokens.
    assert _flag(args, "--update-freq") == "22" and _flag(args, "--rdrop-alpha") == "0"
    assert "= 66000 tokens per update" in r.stderr


@pytest.mark.usefixtures("cuda_hidden")  # the CPU fallback, on a GPU machine too
def test_checkpoint_activations_switch_adds_fairseqs_flag_and_keeps_the_batch(tmp_path):
    runs = {}
    for switch in ("0", "1"):
        r, runs[switch] = _train_args(tmp_path / switch, CHECKPOINT_ACTIVATIONS=switch)
        assert r.returncode == 0, r.stderr[-3000:]
    assert "--checkpoint-activations" not in runs["0"] and runs["1"].count("--checkpoint-activations") == 1
    for flag in ("--max-tokens", "--update-freq"):
        assert _flag(runs["1"], flag) == _flag(runs["0"], flag), flag


@pytest.mark.parametrize("env,message", [
    ({"NUM_GPUS": "9"}, "NUM_GPUS must be 1..8"),
    ({"RDROP_ALPHA": "-1"}, "RDROP_ALPHA must be a number"),
    ({"MAX_TOKENS": "0"}, "MAX_TOKENS must be a positive integer"),
    ({"CHECKPOINT_ACTIVATIONS": "yes"}, "CHECKPOINT_ACTIVATIONS must be 0 or 1, got 'yes'"),
    ({"NUM_GPUS": "2"}, "no CUDA device found, so NUM_GPUS must be 1"),
])
@pytest.mark.usefixtures("cuda_hidden")  # the CPU fallback, on a GPU machine too
def test_train_rejects_bad_settings(tmp_path, env, message):
    r, _ = _train_args(tmp_path, **env)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_generate_rejects_a_missing_checkpoint(tmp_path):
    r = subprocess.run([sys.executable, str(EXAMPLES / "generate_cnn_dm.py"), "--checkpoint", tmp_path / "x.pt",
                        "--data", tmp_path, "--source", tmp_path / "s", "--out", tmp_path / "o"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "checkpoint not found" in r.stderr


def test_generate_defaults_are_barts_cnn_dm_inference_settings():
    spec = importlib.util.spec_from_file_location("generate_cnn_dm", EXAMPLES / "generate_cnn_dm.py")
    generate_cnn_dm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate_cnn_dm)
    assert generate_cnn_dm.CNN_DM == dict(beam=4, lenpen=2.0, max_len_b=140, min_len=55, no_repeat_ngram_size=3)


# -------------------------------------------------------------- end to end


def test_smoke_preparation_binarizes_scitldr_with_the_byte_level_stand_in_bpe(tmp_path):
    import gzip

    from fairseq.data import Dictionary, data_utils
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    work, data = tmp_path / "work", tmp_path / "data-bin"
    r = _bash("prepare_cnn_dm.sh", "--smoke", WORK=str(work), DATA=str(data))
    assert r.returncode == 0, r.stderr[-3000:]
    with gzip.open(REPO / "data" / "summarization" / "scitldr" / "test.jsonl.gz", "rt", encoding="utf-8") as f:
        first = json.loads(next(f))
    assert (data / "test.target").read_text().splitlines()[0] == " ".join(first["target"][0].split())
    dictionary = Dictionary.load(str(data / "dict.source.txt"))
    encoder = get_encoder(str(work / "gpt2_bpe" / "encoder.json"), str(work / "gpt2_bpe" / "vocab.bpe"))
    dataset = data_utils.load_indexed_dataset(str(data / "test.source-target.source"), dictionary)
    assert len(dataset) == 10
    assert encoder.decode([int(t) for t in dictionary.string(dataset[0]).split()]) == " ".join(
        " ".join(first["source"]).split())


@pytest.mark.slow
@pytest.mark.usefixtures("cuda_hidden")  # the CPU path, on a GPU machine too
def test_smoke_mode_prepares_fine_tunes_a_stand_in_bart_summarizes_and_scores(tmp_path):
    """SMOKE=1: SciTLDR stand-in data, a stand-in "pretrained" tiny bart_large-shaped
    model, 2 R-Drop updates restored from it, BARTModel.from_pretrained + sample, ROUGE (~1.5 min)."""
    data = tmp_path / "data-bin"
    r = _bash("train_cnn_dm.sh", SMOKE="1", DATA=str(data))
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert f"Loaded checkpoint {tmp_path / 'bart' / 'model.pt'}" in log and "kl_loss" in log
    assert "--arch bart_large" in r.stderr and "num_updates 2" in log
    hypo = tmp_path / "checkpoints" / "test.checkpoint_best.hypo"
    assert len(hypo.read_text().splitlines()) == 10
    assert "10 examples, 1.00 references per example, stemming on" in r.stdout
    assert "paper-comparable ROUGE-1/2/L F1 (ROUGE-L = ROUGE-Lsum, as files2rouge): " in r.stdout
    scores = json.loads((tmp_path / "checkpoints" / "test.checkpoint_best.rouge.json").read_text())["scores"]
    assert all(0.0 <= scores[m]["fmeasure"] <= 100.0 for m in scores)
