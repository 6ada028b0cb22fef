"""The R-Drop criterion under fairseq's other seq2seq tasks: speech_to_text (S2T transformer on filterbanks,
with and without target language tags), translation_multi_simple_epoch with language tags, BART on translation."""

import csv
import math
import re

import numpy as np
import pytest

from .helpers.fairseq_runs import COMMON_TRAIN, RDROP, TINY_DIMS, TINY_TRANSFORMER, USER_DIR, run_tool, train_records, write_lines

# Six updates, a train_inner record every two; validation in one batch of every
# sentence (fairseq's default multiple of 8 sentences per batch drops the rest).
FEW_UPDATES = [
    "--max-update", 6, "--log-interval", 2,
    "--required-batch-size-multiple", 1, "--batch-size-valid", 256, "--max-tokens-valid", 100_000,
]
VALID_KEYS = ("loss", "nll_loss", "ppl", "wps", "wpb", "bsz", "num_updates")


def train(save, *args):
    """fairseq-train with R-Drop into ``save``; returns the path of its console output,
    whose records are tagged by subset (``train_inner``, ``train``, the validation subset)."""
    save.mkdir()
    proc = run_tool("fairseq-train", *args, *COMMON_TRAIN, *RDROP, *FEW_UPDATES, "--save-dir", save)
    console = save / "console.log"
    console.write_text(proc.stdout, encoding="utf-8")
    return console


def assert_trained_with_kl_and_validated_in_one_pass(console, subset, sentences, target_tokens):
    """Training logged a finite kl_loss > 0 in every train_inner record and epoch summary.
    Validation is the criterion's eval path, fairseq's label-smoothed cross-entropy: one
    batch of the ``sentences`` counted once, with their ``target_tokens`` (not doubled),
    a finite loss, and no KL key at all."""
    inner = train_records(console)
    assert [r["num_updates"] for r in inner] == [2, 4, 6], inner
    for record in inner:
        assert math.isfinite(record["loss"]) and math.isfinite(record["nll_loss"]), record
        assert math.isfinite(record["kl_loss"]) and record["kl_loss"] > 0, record
    summary = train_records(console, "train")[-1]
    assert summary["train_num_updates"] == 6 and summary["train_kl_loss"] > 0, summary
    valid = train_records(console, subset)
    assert valid and valid[-1][f"{subset}_num_updates"] == 6, valid
    for record in valid:
        logged = {key for key in record if key not in ("epoch", f"{subset}_best_loss")}
        assert logged == {f"{subset}_{key}" for key in VALID_KEYS}, record
        assert math.isfinite(record[f"{subset}_loss"]) and record[f"{subset}_loss"] > 0, record
        assert record[f"{subset}_bsz"] == sentences and record[f"{subset}_wpb"] == target_tokens, record


def generate(data, checkpoint, *args, subset="test"):
    """fairseq-generate with the plugin loaded, keeping every sentence of ``subset``."""
    return run_tool(
        "fairseq-generate", data, "--user-dir", USER_DIR, "--path", checkpoint, "--cpu", "--gen-subset", subset,
        "--beam", 2, "--required-batch-size-multiple", 1, *args,
    ).stdout


def hypothesis_ids(generate_output):
    """The sentence ids of fairseq-generate's H- lines (id, score, hypothesis), sorted."""
    return sorted(int(i) for i in re.findall(r"^H-(\d+)\t-?[\d.]+(?:e-?\d+)?\t.*$", generate_output, flags=re.M))


def sentencepieces(root, lang):
    """The validation sentences of ``multi30k_bin`` in ``lang``, as sentencepiece tokens."""
    return (root / f"valid.{lang}").read_text(encoding="utf-8").splitlines()


# --- speech_to_text -------------------------------------------------------------------------

SAMPLE_RATE = 16000
LETTERS = "abcdefgh"
SPEECH_SIZES = {"train": 160, "dev": 16, "test": 13}


def mel_filterbank(n_mels=80, n_fft=512, low=20.0, high=SAMPLE_RATE / 2):
    """Triangular filters equally spaced on the mel scale (Kaldi's 1127 ln(1 + f/700))."""
    mel = lambda hz: 1127.0 * np.log1p(hz / 700.0)  # noqa: E731
    edges = 700.0 * np.expm1(np.linspace(mel(low), mel(high), n_mels + 2) / 1127.0)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.clip(np.minimum((freqs - lo) / (centre - lo), (hi - freqs) / (hi - centre)), 0.0, None)


def log_mel_fbank(wave, filters):
    """(frames, 80) log-mel energies: 25 ms Hamming windows every 10 ms, 512-point FFT."""
    frame, hop = 400, 160
    starts = np.arange(1 + (len(wave) - frame) // hop) * hop
    frames = wave[starts[:, None] + np.arange(frame)] * np.hamming(frame)
    power = np.abs(np.fft.rfft(frames, 512)) ** 2
    return np.log(power @ filters.T + 1e-6).astype(np.float32)


def spoken(letters, rng):
    """A noisy waveform with one 80 ms tone (and its octave) per letter, pitched by the letter."""
    t = np.arange(int(0.08 * SAMPLE_RATE)) / SAMPLE_RATE
    pieces = [np.zeros(int(0.03 * SAMPLE_RATE))]
    for letter in letters:
        pitch = 220.0 * 2 ** (LETTERS.index(letter) / 3)
        tone = np.sin(2 * np.pi * pitch * t) + 0.3 * np.sin(4 * np.pi * pitch * t)
        pieces += [rng.uniform(0.3, 1.0) * tone * np.hanning(len(t)), np.zeros(int(0.02 * SAMPLE_RATE))]
    wave = np.concatenate(pieces)
    return wave + 0.01 * rng.standard_normal(len(wave))


def write_manifest(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(
            f, fieldnames=list(rows[0]), delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def speech_data(tmp_path_factory):
    """A tiny S2T data set in fairseq's format: .npy log-mel filterbanks of synthetic
    speech, a character dictionary, and two variants of manifests and config:
    ``{split}.tsv`` + config.yaml (speech recognition: the letters spoken) and
    ``{split}_tagged.tsv`` + config_tagged.yaml (a target language tag, ``<lang:fw>``
    for the letters in order or ``<lang:bw>`` for them reversed, prepended to the target)."""
    root = tmp_path_factory.mktemp("s2t")
    (root / "fbank").mkdir()
    rng = np.random.default_rng(0)
    filters = mel_filterbank()
    for split, count in SPEECH_SIZES.items():
        plain, tagged = [], []
        for i in range(count):
            letters = list(rng.choice(list(LETTERS), size=rng.integers(2, 6)))
            features = log_mel_fbank(spoken(letters, rng), filters)
            path = root / "fbank" / f"{split}-{i}.npy"
            np.save(path, features)
            row = {"id": f"{split}-{i}", "audio": str(path), "n_frames": len(features),
                   "tgt_text": " ".join(letters), "speaker": f"spk{i % 3}"}
            lang = ("fw", "bw")[i % 2]
            plain.append(row)
            tagged.append({**row, "tgt_text": " ".join(letters if lang == "fw" else letters[::-1]), "tgt_lang": lang})
        write_manifest(root / f"{split}.tsv", plain)
        write_manifest(root / f"{split}_tagged.tsv", tagged)
    write_lines(root / "dict.txt", [f"{symbol} 100" for symbol in [*LETTERS, "<lang:fw>", "<lang:bw>"]])
    config = ["input_feat_per_channel: 80", "input_channels: 1", "vocab_filename: dict.txt",
              "feature_transforms:", "  '*':", "  - utterance_cmvn"]
    write_lines(root / "config.yaml", config)
    write_lines(root / "config_tagged.yaml", [*config, "prepend_tgt_lang_tag: true"])
    return root


@pytest.mark.parametrize(
    "suffix, config, prefix",
    [("", "config.yaml", []), ("_tagged", "config_tagged.yaml", ["--ignore-prefix-size", 1])],
    ids=["speech_recognition", "target_language_tag_with_ignore_prefix_size_1"],
)
def test_speech_to_text_with_an_s2t_transformer_trains_with_kl_validates_in_one_pass_and_generates(
    speech_data, suffix, config, prefix
):
    save = speech_data / f"ckpt{suffix}"
    console = train(
        save, speech_data, "--task", "speech_to_text", "--config-yaml", config,
        "--train-subset", f"train{suffix}", "--valid-subset", f"dev{suffix}",
        "--arch", "s2t_transformer_s", *TINY_DIMS, "--conv-channels", 64, "--share-decoder-input-output-embed",
        "--label-smoothing", 0.1, *prefix, "--max-tokens", 4000,
    )
    with open(speech_data / f"dev{suffix}.tsv", encoding="utf-8") as f:
        dev = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    # letters, end of sentence and, with the tag, the tag
    target_tokens = sum(len(row["tgt_text"].split()) + 1 + bool(prefix) for row in dev)
    assert_trained_with_kl_and_validated_in_one_pass(console, f"dev{suffix}", SPEECH_SIZES["dev"], target_tokens)
    out = generate(
        speech_data, save / "checkpoint_last.pt", "--task", "speech_to_text", "--config-yaml", config,
        "--max-tokens", 20_000, "--max-len-b", 8, *(["--prefix-size", 1] if prefix else []), subset=f"test{suffix}",
    )
    assert hypothesis_ids(out) == list(range(SPEECH_SIZES["test"])), out[-3000:]


# --- translation_multi_simple_epoch ---------------------------------------------------------

MULTILINGUAL = [
    "--task", "translation_multi_simple_epoch", "--lang-pairs", "en-de,de-en", "--langs", "en,de",
    "--encoder-langtok", "src", "--decoder-langtok",
]
SHORT_OUTPUT = ["--batch-size", 32, "--max-len-a", 1.2, "--max-len-b", 10, "--remove-bpe", "sentencepiece"]


def test_multilingual_many_to_many_with_language_tags_trains_with_kl_validates_in_one_pass_and_generates(
    multi30k_bin,
):
    save = multi30k_bin / "seq2seq-multilingual"
    console = train(
        save, multi30k_bin / "bin", *MULTILINGUAL, "--sampling-method", "temperature", "--sampling-temperature", 1.5,
        *TINY_TRANSFORMER, "--label-smoothing", 0.1, "--ignore-prefix-size", 1, "--max-tokens", 1024,
    )
    # valid holds both directions of the 60 validation pairs; a target is its language
    # tag, its sentencepiece tokens and the end of sentence
    target_tokens = sum(len(line.split()) + 2 for lang in ("en", "de") for line in sentencepieces(multi30k_bin, lang))
    assert_trained_with_kl_and_validated_in_one_pass(console, "valid", 2 * 60, target_tokens)
    out = generate(
        multi30k_bin / "bin", save / "checkpoint_best.pt", *MULTILINGUAL,
        "--source-lang", "en", "--target-lang", "de", *SHORT_OUTPUT,
    )
    assert hypothesis_ids(out) == list(range(60)), out[-3000:]
    assert re.search(r"^S-0\t__en__ ", out, flags=re.M), out[-3000:]


# --- BART fine-tuning on the translation task -----------------------------------------------


def test_bart_fine_tuning_on_the_translation_task_trains_with_kl_validates_in_one_pass_and_generates(multi30k_bin):
    save = multi30k_bin / "seq2seq-bart"
    console = train(
        save, multi30k_bin / "bin", "--task", "translation", "--source-lang", "en", "--target-lang", "de",
        "--truncate-source", "--arch", "bart_base", *TINY_DIMS, "--attention-dropout", 0.1,
        "--share-all-embeddings", "--share-decoder-input-output-embed", "--layernorm-embedding",
        "--label-smoothing", 0.1, "--clip-norm", 0.1, "--max-tokens", 1024,
    )
    target_tokens = sum(len(line.split()) + 1 for line in sentencepieces(multi30k_bin, "de"))
    assert_trained_with_kl_and_validated_in_one_pass(console, "valid", 60, target_tokens)
    out = generate(
        multi30k_bin / "bin", save / "checkpoint_best.pt", "--task", "translation", "--source-lang", "en",
        "--target-lang", "de", *SHORT_OUTPUT,
    )
    assert hypothesis_ids(out) == list(range(60)), out[-3000:]
