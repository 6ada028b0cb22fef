"""What the three demos share: seed statistics, the progress display, failing commands."""

import math
import sys

import pytest

from .cli import REPO  # noqa: F401  (puts the repository on sys.path)

from scripts.demo_support import (  # noqa: E402
    DemoRun, TrainingProgress, describe_gain, fairseq_train, paired_gain, run_command, seed_rows, seed_sd,
)


def results_of(arms):
    """A demo's results dict from {arm: {seed: score}}."""
    return {"runs": {name: {"alpha": 0.0, "seeds": [{"seed": seed, "score": value} for seed, value in seeds.items()]}
                     for name, seeds in arms.items()}}


def test_seed_sd_is_the_sample_standard_deviation():
    # mean 23; squared deviations 9 + 1 + 16 = 26; 26 / (3 - 1) = 13
    assert seed_sd([20.0, 22.0, 27.0]) == pytest.approx(math.sqrt(13))


def test_seed_sd_of_one_seed_is_refused():
    with pytest.raises(ValueError, match="at least two seeds"):
        seed_sd([20.0])


def test_paired_gain_pairs_seeds_not_positions():
    results = results_of({"baseline": {3: 21.0, 1: 20.0, 2: 18.5}, "rdrop": {1: 21.0, 2: 19.0, 3: 24.0}})
    gain = paired_gain(results, lambda s: s["score"])
    # differences 1.0, 0.5, 3.0: mean 1.5; squared deviations 0.25 + 1 + 2.25 = 3.5, / 2 = 1.75
    assert gain["per_seed"] == {"1": 1.0, "2": 0.5, "3": 3.0}
    assert gain["mean"] == pytest.approx(1.5)
    assert gain["sd"] == pytest.approx(math.sqrt(1.75), abs=1e-4)
    assert gain["se"] == pytest.approx(math.sqrt(1.75) / math.sqrt(3), abs=1e-4)
    assert gain["seeds"] == 3


def test_paired_gain_against_another_baseline_arm():
    results = results_of({"baseline": {1: 10.0}, "baseline_2x": {1: 12.5}, "rdrop": {1: 12.0}})
    assert paired_gain(results, lambda s: s["score"], baseline="baseline_2x")["mean"] == pytest.approx(-0.5)


def test_paired_gain_of_one_seed_has_no_spread():
    gain = paired_gain(results_of({"baseline": {1: 10.0}, "rdrop": {1: 12.0}}), lambda s: s["score"])
    assert (gain["mean"], gain["sd"], gain["se"]) == (2.0, None, None)
    assert describe_gain(gain) == "+2.00"


def test_describe_gain_names_seeds_sd_and_standard_error():
    gain = {"mean": 1.5, "sd": 1.3229, "se": 0.7638, "seeds": 3}
    assert describe_gain(gain) == "+1.50 (3 seeds; sd 1.32, standard error 0.76)"


def test_seed_rows_are_each_seed_then_mean_and_sd():
    arm = {"seeds": [{"seed": 1, "score": 20.0}, {"seed": 2, "score": 22.0}, {"seed": 3, "score": 27.0}]}
    rows = [(label, figure(lambda s: s["score"])) for label, figure in seed_rows(arm)]
    assert rows[:3] == [("1", 20.0), ("2", 22.0), ("3", 27.0)]
    assert rows[3] == ("mean", pytest.approx(23.0))
    assert rows[4] == ("sd", pytest.approx(math.sqrt(13)))


def test_seed_rows_of_one_seed_have_no_mean_row():
    assert [label for label, _ in seed_rows({"seeds": [{"seed": 7, "score": 1.0}]})] == ["7"]


FAIRSEQ_LINES = [
    "2026-12-01 10:00:00 | INFO | fairseq_cli.train | Start iterating over samples\n",
    '2026-12-01 10:00:05 | INFO | train_inner | {"epoch": 1, "update": 0.5, "loss": "9.5", "kl_loss": "0.25", '
    '"num_updates": "25"}\n',
    '2026-12-01 10:00:09 | INFO | valid | {"epoch": 1, "valid_loss": "8.75", "valid_bleu": "3.5", '
    '"valid_num_updates": "30"}\n',
]


def test_training_progress_shows_updates_losses_kl_and_validation(capsys):
    progress = TrainingProgress("rdrop seed 1", 60, position=0)
    for line in FAIRSEQ_LINES:
        progress.feed(line)
    assert progress.bar.n == 30 and progress.bar.total == 60
    assert progress.figures == {"loss": 9.5, "kl": 0.25, "valid loss": 8.75, "valid BLEU": 3.5}
    progress.bar.refresh()
    shown = capsys.readouterr().out
    progress.close()
    assert "rdrop seed 1" in shown and "30/60" in shown
    assert "loss 9.5, kl 0.25, valid loss 8.75, valid BLEU 3.5" in shown


def test_failing_command_stops_with_the_log_tail_and_path(tmp_path):
    log_file = tmp_path / "step.log"
    script = "import sys\nfor i in range(50): print('line', i)\nsys.exit(3)"
    with pytest.raises(SystemExit) as stopped:
        run_command([sys.executable, "-c", script], log_file)
    message = str(stopped.value)
    assert "exit status 3" in message and "line 49" in message and "line 10\n" not in message
    assert message.endswith(f"full log: {log_file}")
    assert "line 0\n" in log_file.read_text()


def test_a_run_without_any_validation_bleu_stops_with_the_reason_and_the_fix(tmp_path):
    # A stand-in fairseq-train that fails as fairseq does when every validation translation is empty.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "fairseq-train"
    fake.write_text("#!/bin/sh\necho 'Traceback (most recent call last):'\necho \"KeyError: 'bleu'\"\nexit 1\n")
    fake.chmod(0o755)
    run = DemoRun("rdrop", 5.0, 1, {"max_update": 30}, tmp_path / "run", threads=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("scripts.demo_support.tool", lambda name: str(fake_bin / name))
        with pytest.raises(SystemExit) as stopped:
            fairseq_train(["--max-update", 30], run)
    message = str(stopped.value)
    assert "KeyError: 'bleu'" in message and f"full log: {run.save_dir / 'train.log'}" in message
    assert "every validation translation was empty" in message and "train longer (--max-update)" in message
