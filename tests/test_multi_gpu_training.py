"""What users run on several GPUs, on two CPU ranks (gloo, legacy_ddp): resuming
from checkpoint_last.pt, --restore-file and --finetune-from-model of a one-rank
checkpoint, EMA, and generating from an averaged or an EMA checkpoint.

Rank 0 reads a checkpoint and sends it to the other ranks (fairseq's
``broadcast_object``, which unpickles it there with ``torch.load``); each rank
records, at every training forward, an exact checksum of its parameters
(``math.fsum`` of the float64 sums of every floating-point tensor of the
model's state, which the checkpoint's ``model`` entry holds too). So "every rank
starts from the checkpoint" is checked on every rank, not only on rank 0, which
alone saves.
"""

import json
import math

import pytest
import torch
from fairseq import checkpoint_utils, options

import rdrop_fairseq  # noqa: F401  (fairseq's loaders accept fairseq's checkpoint types)

from .helpers.fairseq_runs import (
    COMMON_TRAIN, NOT_LEARNED, RDROP, REPO, TINY_TRANSFORMER, USER_DIR, learned_state, run_tool, train_records,
)
from .helpers.distributed import train_on_two_ranks

K = 3

# label_smoothed_cross_entropy_rdrop that appends to $RDROP_RECORD.<rank>, where
# that is set, the update and the parameter checksum at every training forward.
CHECKSUM_CRITERION = """
import json, math, os
import torch
from fairseq.criterions import register_criterion
from rdrop_fairseq.criterions.label_smoothed_cross_entropy_rdrop import (
    LabelSmoothedCrossEntropyRDropCriterion, LabelSmoothedCrossEntropyRDropCriterionConfig)

def checksum(state):
    return math.fsum(float(t.double().sum()) for name, t in state.items()
                     if torch.is_tensor(t) and t.is_floating_point() and name.rpartition(".")[2] not in NOT_LEARNED)

NOT_LEARNED = NOT_LEARNED_NAMES

@register_criterion("rdrop_checksum", dataclass=LabelSmoothedCrossEntropyRDropCriterionConfig)
class RDropChecksum(LabelSmoothedCrossEntropyRDropCriterion):
    def forward(self, model, sample, reduce=True):
        if model.training and "RDROP_RECORD" in os.environ:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            with open(os.environ["RDROP_RECORD"] + f".{rank}", "a") as f:
                f.write(json.dumps({"update": self.num_updates_done() + 1, "params": checksum(model.state_dict())}) + "\\n")
        return super().forward(model, sample, reduce)
"""


def checksum(state):
    """The recording criterion's checksum of a checkpoint's ``model`` entry."""
    return math.fsum(float(t.double().sum()) for t in learned_state(state).values()
                     if torch.is_tensor(t) and t.is_floating_point())


def training_args(data, save_dir, max_update, *extra):
    return [
        data / "bin", "--task", "translation", *TINY_TRANSFORMER, *COMMON_TRAIN, *RDROP,
        "--user-dir", data / "rdrop_checksum", "--criterion", "rdrop_checksum", "--label-smoothing", 0.1,
        "--max-tokens", 512, "--max-update", max_update, "--log-interval", 1,
        "--save-dir", save_dir, "--log-file", save_dir / "train.log", *extra,
    ]


def train_two_ranks(data, save_dir, max_update, *extra):
    save_dir.mkdir(exist_ok=True)
    outputs = train_on_two_ranks(training_args(data, save_dir, max_update, *extra),
                                 env={"RDROP_RECORD": str(save_dir / "record")})
    return "\n".join(outputs)


def recorded(save_dir):
    """{rank: [(update, checksum)]} in the order the forwards ran."""
    return {
        rank: [(r["update"], r["params"]) for r in map(json.loads, (save_dir / f"record.{rank}").read_text().splitlines())]
        for rank in (0, 1)
    }


def load(path):
    return checkpoint_utils.load_checkpoint_to_cpu(str(path))


@pytest.fixture(scope="module")
def data(multi30k_bin):
    user_dir = multi30k_bin / "rdrop_checksum"
    user_dir.mkdir(exist_ok=True)
    (user_dir / "__init__.py").write_text(CHECKSUM_CRITERION.replace("NOT_LEARNED_NAMES", repr(NOT_LEARNED)))
    return multi30k_bin


# with a checkpoint after every update, which averaging and the checks read
EMA_EVERY_UPDATE = ["--store-ema", "--ema-decay", 0.9, "--save-interval-updates", 1]


@pytest.fixture(scope="module")
def resumed(data):
    """An uninterrupted two-rank run of 2K updates and one stopped at K and resumed."""
    whole, resumed = data / "two-ranks-whole", data / "two-ranks-resumed"
    train_two_ranks(data, whole, 2 * K, *EMA_EVERY_UPDATE)
    train_two_ranks(data, resumed, K, *EMA_EVERY_UPDATE)
    output = train_two_ranks(data, resumed, 2 * K, *EMA_EVERY_UPDATE)
    assert f"Loaded checkpoint {resumed / 'checkpoint_last.pt'} (epoch 1 @ {K} updates)" in output
    return whole, resumed


@pytest.fixture(scope="module")
def one_rank_checkpoint(data):
    save = data / "one-rank-pretrained"
    save.mkdir(exist_ok=True)
    run_tool("fairseq-train", *training_args(data, save, K))
    return save / "checkpoint_last.pt"


def test_every_rank_resumes_from_the_checkpoint_and_the_ranks_stay_in_step(resumed):
    _, resumed_dir = resumed
    ranks = recorded(resumed_dir)
    assert ranks[0] == ranks[1]
    assert [update for update, _ in ranks[0]] == list(range(1, 2 * K + 1))
    # update K + 1, the first after the restart, starts from what was saved at K
    assert ranks[0][K][1] == checksum(load(resumed_dir / f"checkpoint_1_{K}.pt")["model"])


def test_a_resumed_two_rank_run_reaches_the_uninterrupted_runs_parameters_and_ema(resumed):
    whole, again = (load(d / "checkpoint_last.pt") for d in resumed)
    assert whole["optimizer_history"][-1]["num_updates"] == again["optimizer_history"][-1]["num_updates"] == 2 * K
    for name, value in learned_state(whole["model"]).items():
        torch.testing.assert_close(again["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    ema, ema_again = whole["extra_state"]["ema"], again["extra_state"]["ema"]
    assert ema.keys() == ema_again.keys() and ema.keys() == whole["model"].keys()
    for name, value in learned_state(ema).items():
        torch.testing.assert_close(ema_again[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(ema[name], whole["model"][name]) for name in ema), "EMA must differ from the model"


def test_the_resumed_run_logs_the_uninterrupted_runs_losses(resumed):
    whole, again = (train_records(d / "train.log") for d in resumed)
    assert [r["num_updates"] for r in again] == [r["num_updates"] for r in whole] == list(range(1, 2 * K + 1))
    for mine, reference in zip(again, whole):
        for key in ("loss", "nll_loss", "kl_loss"):
            assert mine[key] == pytest.approx(reference[key], abs=1.5e-3), (mine["num_updates"], key)


def args_only_checkpoint(data, source, path):
    """``source`` as checkpoints from before fairseq's hydra configs hold it, as
    bart.large's model.pt does: an argparse.Namespace of the training flags, no cfg."""
    state = torch.load(source, map_location="cpu", weights_only=False)
    args = training_args(data, path.parent, K)
    state["args"] = options.parse_args_and_arch(options.get_training_parser(), [str(a) for a in args])
    del state["cfg"]
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "how",
    ["--restore-file, resetting optimizer, data loader and meters", "--restore-file of an args-only checkpoint",
     "--finetune-from-model"],
)
def test_both_ranks_start_from_a_one_rank_checkpoint(data, one_rank_checkpoint, how, tmp_path):
    checkpoint = one_rank_checkpoint
    if "args-only" in how:
        checkpoint = args_only_checkpoint(data, one_rank_checkpoint, tmp_path / "model.pt")
    if how.startswith("--restore-file"):
        flags = ["--restore-file", checkpoint, "--reset-optimizer", "--reset-dataloader", "--reset-meters"]
    else:
        flags = ["--finetune-from-model", checkpoint]
    save = tmp_path / "fine-tuned"
    output = train_two_ranks(data, save, 2, *flags)
    assert f"Loaded checkpoint {checkpoint} (epoch 1 @ 0 updates)" in output
    ranks = recorded(save)
    assert ranks[0] == ranks[1] and [u for u, _ in ranks[0]] == [1, 2]
    assert ranks[0][0][1] == checksum(load(one_rank_checkpoint)["model"])


def generate(data, checkpoint):
    """fairseq-generate's hypotheses for the test split (those of its sentences it translates)."""
    proc = run_tool(
        "fairseq-generate", data / "bin", "--path", checkpoint, "--user-dir", USER_DIR, "--task", "translation",
        "--gen-subset", "test", "--beam", 1, "--max-tokens", 2048, "--max-len-b", 8, "--cpu", cwd=REPO,
    )
    return [line for line in proc.stdout.splitlines() if line.startswith("H-")]


@pytest.fixture(scope="module")
def translated(resumed, data):
    """How many sentences fairseq-generate translates with the last checkpoint itself."""
    count = len(generate(data, resumed[0] / "checkpoint_last.pt"))
    assert count > 50
    return count


def test_fairseq_generate_reads_an_averaged_two_rank_checkpoint(resumed, data, tmp_path, translated):
    whole_dir, _ = resumed
    averaged = tmp_path / "averaged.pt"
    run_tool("python", REPO / "scripts" / "average_checkpoints.py", "--inputs", whole_dir,
             "--num-update-checkpoints", 2, "--output", averaged)
    parts = [load(whole_dir / f"checkpoint_1_{u}.pt")["model"] for u in (2 * K - 1, 2 * K)]
    state = load(averaged)
    for name, value in state["model"].items():
        torch.testing.assert_close(value, (parts[0][name].double() + parts[1][name].double()).div(2).to(value.dtype))
    assert len(generate(data, averaged)) == translated


def test_fairseq_generate_reads_the_ema_of_a_two_rank_run(resumed, data, tmp_path, translated):
    whole_dir, _ = resumed
    ema_path = tmp_path / "ema.pt"
    checkpoint_utils.save_ema_as_checkpoint(str(whole_dir / "checkpoint_last.pt"), str(ema_path))
    ema = load(whole_dir / "checkpoint_last.pt")["extra_state"]["ema"]
    assert all(torch.equal(value, ema[name]) for name, value in load(ema_path)["model"].items())
    assert len(generate(data, ema_path)) == translated
