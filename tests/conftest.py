"""Fixtures shared by the test modules."""

import pytest
import sentencepiece as spm
import torch.distributed as dist

from .helpers.fairseq_runs import MULTI30K, head_lines, run_tool, write_lines


@pytest.fixture(scope="session")
def multi30k_bin(tmp_path_factory):
    """Sentencepiece + fairseq-preprocess of a real Multi30k slice (en->de)."""
    root = tmp_path_factory.mktemp("multi30k")
    sizes = {"train": ("train", 1500), "valid": ("val", 60), "test": ("test_2016_flickr", 60)}
    for split, (stem, count) in sizes.items():
        for lang in ("en", "de"):
            write_lines(root / f"{split}.raw.{lang}", head_lines(MULTI30K / f"{stem}.{lang}.gz", count))
    spm.SentencePieceTrainer.train(
        input=[str(root / "train.raw.en"), str(root / "train.raw.de")],
        model_prefix=str(root / "spm"), vocab_size=600, character_coverage=1.0, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(root / "spm.model"))
    for split in sizes:
        for lang in ("en", "de"):
            lines = (root / f"{split}.raw.{lang}").read_text(encoding="utf-8").splitlines()
            write_lines(root / f"{split}.{lang}", [" ".join(p) for p in sp.encode(lines, out_type=str)])
    run_tool(
        "fairseq-preprocess", "--source-lang", "en", "--target-lang", "de", "--joined-dictionary",
        "--trainpref", root / "train", "--validpref", root / "valid", "--testpref", root / "test",
        "--destdir", root / "bin", "--workers", 1,
    )
    return root


@pytest.fixture
def cuda_hidden(monkeypatch):
    """The recipes' CPU fallback on any machine: the scripts ask torch for a GPU
    in a subprocess, which then sees none."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture
def one_rank_process_group(tmp_path):
    """A real gloo process group of this one process, for fairseq's all-reduce."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


@pytest.fixture(autouse=True)
def fresh_fairseq_metrics():
    """fairseq's metrics live in module state whose root aggregator is always active:
    one criterion's derived meter (label smoothing's accuracy) would meet another's
    scalar of the same name (sentence prediction's) in the next test."""
    from fairseq.logging import metrics

    metrics.reset()
    yield
