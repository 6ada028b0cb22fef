"""--tensorboard-logdir: fairseq's TensorBoard event files carry kl_loss beside
the usual curves (fairseq writes them with tensorboardX when torch's own
writer, which needs the tensorboard package, is missing)."""

import struct
from collections import defaultdict

import pytest
# requirements.txt installs tensorboardX: without it this is an error, not a skip
from tensorboardX.proto import event_pb2

from .helpers.fairseq_runs import COMMON_TRAIN, RDROP, TINY_TRANSFORMER, run_tool


def read_scalars(event_dir):
    """{tag: [(step, value)]} from the TFRecord event files in ``event_dir``:
    each record is an 8-byte little-endian length, its 4-byte CRC, the
    serialized Event and the data's 4-byte CRC."""
    scalars = defaultdict(list)
    for path in sorted(event_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars[value.tag].append((event.step, value.simple_value))
    return scalars


@pytest.fixture(scope="module")
def tensorboard_dir(multi30k_bin):
    save = multi30k_bin / "tensorboard-run"
    run_tool(
        "fairseq-train", multi30k_bin / "bin", "--task", "translation", *TINY_TRANSFORMER, *COMMON_TRAIN, *RDROP,
        "--label-smoothing", 0.1, "--max-tokens", 1024, "--max-update", 4, "--log-interval", 2,
        "--rdrop-alpha-warmup-updates", 4, "--save-dir", save, "--no-save",
        "--tensorboard-logdir", save / "tb",
    )
    return save / "tb"


def test_training_curves_include_kl_loss_and_rdrop_alpha_beside_loss(tensorboard_dir):
    scalars = read_scalars(tensorboard_dir / "train_inner")
    assert {"loss", "nll_loss", "ppl", "lr", "kl_loss", "rdrop_alpha"} <= scalars.keys()
    assert [step for step, _ in scalars["kl_loss"]] == [2, 4]
    assert all(value > 0 for _, value in scalars["kl_loss"])
    # alpha of updates 2 and 4 with a 4-update warm-up to 5: 5 * 1/4 and 5 * 3/4
    assert [value for _, value in scalars["rdrop_alpha"]] == pytest.approx([1.25, 3.75])


def test_validation_curves_have_no_kl(tensorboard_dir):
    scalars = read_scalars(tensorboard_dir / "valid")
    assert "loss" in scalars and "kl_loss" not in scalars
