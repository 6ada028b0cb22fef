"""The loop the demos share (rdrop_experiments): seed statistics, the progress
display, failing commands, stopping on Ctrl-C or a failure, reusing a run or a
data folder only for the same command and inputs."""

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rdrop_experiments import data_prep
from rdrop_experiments.demo import Demo, prepared_data, train_args
from rdrop_experiments.errors import CommandFailed
from rdrop_experiments.fairseq_tools import USER_DIR, run_or_reuse
from rdrop_experiments.processes import run_command
from rdrop_experiments.progress import TrainingProgress
from rdrop_experiments.run_tags import command_tag
from rdrop_experiments.scheduler import run_arms
from rdrop_experiments.statistics import describe_gain, paired_gain, seed_rows, seed_sd
from rdrop_experiments.training import NoValidationBleu, TrainingRun, train_once

from .helpers.demos import load_demo_module


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
    with pytest.raises(CommandFailed) as stopped:
        run_command([sys.executable, "-c", script], log_file)
    message = str(stopped.value)
    assert stopped.value.returncode == 3 and stopped.value.log_path == log_file
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
    run = TrainingRun("rdrop", 5.0, 1, {"max_update": 30}, 1, tmp_path, lambda run: ["--max-update", 30])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("rdrop_experiments.training.fairseq_script", lambda name: str(fake_bin / name))
        with pytest.raises(NoValidationBleu) as stopped:
            train_once(run)
    message = str(stopped.value)
    assert "KeyError: 'bleu'" in message and f"full log: {run.save_dir / 'train.log'}" in message
    assert "every validation translation was empty" in message and "train longer (--max-update)" in message


# A demo as the demos are built (as_program, run_arms, run_command), whose runs are
# stand-in commands: each writes a marker file naming its pid and, when it
# sleeps, the pid of a process it started, so that a test sees which runs
# started and whether any process outlived the demo.
STAND_IN_RUN = r"""
import os, subprocess, sys, time
from pathlib import Path
marker, behaviour = Path(sys.argv[1]), sys.argv[2]
pids = [os.getpid()]
if behaviour == "sleep":
    pids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 stdout=subprocess.DEVNULL).pid)
marker.write_text(" ".join(map(str, pids)))
if behaviour == "sleep":
    time.sleep(120)
elif behaviour.startswith("fail-after:"):
    wait_for = Path(behaviour.partition(":")[2])
    while not wait_for.exists():
        time.sleep(0.05)
    print("stand-in failure")
    sys.exit(1)
"""

STAND_IN_DEMO = r"""
import argparse, sys
from pathlib import Path
from rdrop_experiments import data_prep
from rdrop_experiments.demo import as_program
from rdrop_experiments.processes import run_command
from rdrop_experiments.scheduler import run_arms

work, behaviours = Path(sys.argv[1]), dict(item.split("=", 1) for item in sys.argv[2:])


def train_and_score(run):
    marker = work / "markers" / f"{run.arm}-{run.seed}"
    run_command([sys.executable, "-c", open(work / "run.py").read(), marker,
                 behaviours.get(marker.name, "sleep")], run.save_dir / "train.log")
    return {}


def main():
    if "prepare" in behaviours:  # data preparation, stopped while binarizing
        fake_bin = work / "bin"
        data_prep.fairseq_script = lambda name: str(fake_bin / name)
        prefixes = {split: work / split for split in ("train", "valid", "test")}
        data_prep.binarize_pairs(prefixes, "en", "de", work / "data-bin")
        return
    args = argparse.Namespace(budget="stand-in", threads=1, jobs=2, seeds=[1, 2], alpha=5.0, workdir=work / "runs")
    budget = {"max_update": 10, "interval": 5, "compute_matched": True}
    run_arms(args, budget, {}, lambda run: ["--seed", run.seed, "--rdrop-alpha", run.alpha], train_and_score)


as_program(main)
"""

# Longest first (R-Drop's and baseline_2x's cost alike), two at a time.
ORDER = ["rdrop-1", "rdrop-2", "baseline_2x-1", "baseline_2x-2", "baseline-1", "baseline-2"]


def alive(pid):
    """Whether a process runs (a zombie, exited but not yet reaped, does not)."""
    if not Path("/proc").is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def start_stand_in_demo(work, *behaviours):
    (work / "markers").mkdir(parents=True)
    (work / "run.py").write_text(STAND_IN_RUN)
    (work / "demo.py").write_text(STAND_IN_DEMO)
    return subprocess.Popen([sys.executable, str(work / "demo.py"), str(work), *behaviours],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def markers(work):
    """{run: pids} of the stand-in runs that started."""
    return {m.name: [int(p) for p in m.read_text().split()] for m in (work / "markers").iterdir() if m.read_text()}


def run_folder(work, name):
    arm, seed = name.rsplit("-", 1)
    (folder,) = (work / "runs").glob(f"{arm}-alpha*-seed{seed}-*")
    return folder


def summary_lines(out, count):
    return [line for line in out.splitlines() if line.startswith("[demo]")][-count:]


@pytest.mark.parametrize("signum, status, named", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_an_interrupt_stops_the_demo_keeps_finished_runs_and_leaves_no_process(tmp_path, signum, status, named):
    demo = start_stand_in_demo(tmp_path, "rdrop-1=quick")
    try:
        wait_for(lambda: set(markers(tmp_path)) == set(ORDER[:3]))
        sent = time.monotonic()
        demo.send_signal(signum)
        out, _ = demo.communicate(timeout=30)
    finally:
        demo.kill()
    assert time.monotonic() - sent < 10  # the stand-ins exit at once on SIGTERM
    assert demo.returncode == status, out
    started = markers(tmp_path)
    assert set(started) == set(ORDER[:3]), "a queued run started after the interrupt"
    assert not [pid for pids in started.values() for pid in pids if alive(pid)]
    assert summary_lines(out, 7) == [
        f"[demo] stopped by {named}: 1 finished, 2 stopped, 0 failed, 3 not started",
        "[demo]   baseline seed 1: not started",
        "[demo]   baseline seed 2: not started",
        f"[demo]   rdrop seed 1: finished, kept: the next start reuses it; logs in {run_folder(tmp_path, 'rdrop-1')}",
        f"[demo]   rdrop seed 2: stopped; trained again from the start next time; "
        f"logs in {run_folder(tmp_path, 'rdrop-2')}",
        f"[demo]   baseline_2x seed 1: stopped; trained again from the start next time; "
        f"logs in {run_folder(tmp_path, 'baseline_2x-1')}",
        "[demo]   baseline_2x seed 2: not started",
    ]


def test_a_failing_run_stops_the_demo_before_any_queued_run_starts(tmp_path):
    demo = start_stand_in_demo(tmp_path, f"rdrop-1=fail-after:{tmp_path / 'markers' / 'rdrop-2'}")
    try:
        out, _ = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert demo.returncode == 1, out
    started = markers(tmp_path)
    assert set(started) == set(ORDER[:2]), "a queued run started after the failure"
    assert not [pid for pids in started.values() for pid in pids if alive(pid)]
    failed_log = run_folder(tmp_path, "rdrop-1") / "train.log"
    assert "[demo] rdrop seed 1 failed: python" in out and "stand-in failure\nfull log: " + str(failed_log) in out
    assert summary_lines(out, 7) == [
        "[demo] stopped because rdrop seed 1 failed: 0 finished, 1 stopped, 1 failed, 4 not started",
        "[demo]   baseline seed 1: not started",
        "[demo]   baseline seed 2: not started",
        f"[demo]   rdrop seed 1: failed; trained again from the start next time; logs in {run_folder(tmp_path, 'rdrop-1')}",
        f"[demo]   rdrop seed 2: stopped; trained again from the start next time; "
        f"logs in {run_folder(tmp_path, 'rdrop-2')}",
        "[demo]   baseline_2x seed 1: not started",
        "[demo]   baseline_2x seed 2: not started",
    ]


def test_an_interrupt_while_binarizing_leaves_no_data_folder_and_no_process(tmp_path):
    # A stand-in fairseq-preprocess that has written part of its output when it is stopped.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "fairseq-preprocess").write_text(
        '#!/bin/sh\nwhile [ "$1" != --destdir ]; do shift; done\nmkdir -p "$2"; touch "$2/dict.de.txt"\n'
        f'echo $$ > {tmp_path / "markers" / "preprocess"}\nexec sleep 120\n')
    (fake_bin / "fairseq-preprocess").chmod(0o755)
    demo = start_stand_in_demo(tmp_path, "prepare=1")
    try:
        wait_for(lambda: markers(tmp_path))
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=30)
    finally:
        demo.kill()
    assert demo.returncode == 130, out
    assert not (tmp_path / "data-bin").exists()
    assert not alive(markers(tmp_path)["preprocess"][0])
    assert summary_lines(out, 1) == ["[demo] stopped by Ctrl-C; data folders are used only once complete, so the "
                                     "next start prepares again whatever was not"]


def test_run_once_reuses_the_output_of_the_same_command_only(tmp_path):
    out = tmp_path / "generate.txt"
    count = tmp_path / "count"
    cmd = [sys.executable, "-c", f"open({str(count)!r}, 'a').write('x'); print('made')"]
    run_or_reuse(cmd, out)
    run_or_reuse(cmd, out)
    assert count.read_text() == "x" and out.read_text().endswith("made\n")
    run_or_reuse([*cmd, "--another-flag"], out)
    assert count.read_text() == "xx"


def test_run_once_keeps_nothing_of_a_failed_command(tmp_path):
    out = tmp_path / "generate.txt"
    with pytest.raises(CommandFailed):
        run_or_reuse([sys.executable, "-c", "print('half'); raise SystemExit(2)"], out)
    assert not out.exists()


def test_a_changed_flag_in_a_demos_command_trains_a_new_run(tmp_path, monkeypatch):
    module = load_demo_module("multi30k")
    demo = module.Multi30k()
    bin_dir = tmp_path / "data-bin"
    bin_dir.mkdir()
    (bin_dir / "dict.de.txt").write_text("hallo 1\n")
    fake_train = StandInFairseqTrain(tmp_path, monkeypatch)
    args = argparse.Namespace(budget="default", threads=1, jobs=1, seeds=[1], alpha=5.0, workdir=tmp_path / "runs")
    budget = dict(demo.budgets["default"])

    def folders():
        results = run_arms(args, budget, demo.setup, lambda run: train_args(demo, bin_dir, run, demo.setup),
                           lambda run: {"folder": run.save_dir.name, **dict(zip(("log", "seconds"), train_once(run)))})
        return {name: arm["seeds"][0]["folder"] for name, arm in results["runs"].items()}

    first = folders()
    assert fake_train.trainings() == 2
    assert folders() == first and fake_train.trainings() == 2  # the same command: both runs reused
    # The label smoothing is hard-coded in the command; change it as an edit of the code would.
    original = module.transformer_args
    monkeypatch.setattr(module, "transformer_args", lambda setup: [
        0.2 if previous == "--label-smoothing" else arg for previous, arg in zip([None, *original(setup)], original(setup))])
    assert "--label-smoothing 0.2 " in " ".join(map(str, demo.train_flags(demo.setup, budget)))
    changed = folders()
    assert fake_train.trainings() == 4
    assert set(changed.values()).isdisjoint(first.values())


class StandInFairseqTrain:
    """A fairseq-train that counts its trainings, in place of the real one."""

    def __init__(self, tmp_path, monkeypatch):
        fake_bin = tmp_path / "bin"
        fake_bin.mkdir()
        self.count = tmp_path / "trainings"
        (fake_bin / "fairseq-train").write_text(f"#!/bin/sh\necho x >> {self.count}\n")
        (fake_bin / "fairseq-train").chmod(0o755)
        monkeypatch.setattr("rdrop_experiments.training.fairseq_script", lambda name: str(fake_bin / name))

    def trainings(self):
        return len(self.count.read_text().split()) if self.count.exists() else 0


def test_a_run_whose_done_marker_was_cut_off_trains_again_instead_of_crashing(tmp_path, monkeypatch):
    fake_train = StandInFairseqTrain(tmp_path, monkeypatch)
    run = TrainingRun("rdrop", 5.0, 1, {"max_update": 30}, 1, tmp_path, lambda run: ["--max-update", 30])
    train_once(run)
    assert fake_train.trainings() == 1 and run.finished is not None
    (run.save_dir / "done").write_text('{"seco')  # a write cut off by a full disk or a killed process
    assert run.finished is None
    train_once(run)
    assert fake_train.trainings() == 2
    assert json.loads((run.save_dir / "done").read_text())["seconds"] >= 0
    assert sorted(p.name for p in run.save_dir.iterdir()) == ["done", "train.log"]


class StandInDemo(Demo):
    """A demo whose preparation copies its shipped file and counts how often it ran."""

    preparations = 0

    def __init__(self, data):
        self.data = data

    def data_parameters(self, setup, budget):
        return {"lines": setup["lines"]}

    def prepare_data(self, folder, setup, budget):
        StandInDemo.preparations += 1
        bin_dir = folder / "data-bin"
        bin_dir.mkdir(parents=True)
        lines = (self.data / "train.txt").read_text().splitlines()[:setup["lines"]]
        (bin_dir / "train.txt").write_text("\n".join(lines))
        return bin_dir


def test_prepared_data_are_reused_only_for_the_same_files_parameters_and_code(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "train.txt").write_text("a\nb\nc\n")
    demo, work = StandInDemo(shipped), tmp_path / "work"
    StandInDemo.preparations = 0
    first = prepared_data(demo, work, {"lines": 2}, {})
    assert prepared_data(demo, work, {"lines": 2}, {}) == first and StandInDemo.preparations == 1
    (shipped / "train.txt").write_text("a\nB\nc\n")  # the shipped data changed
    changed_data = prepared_data(demo, work, {"lines": 2}, {})
    assert StandInDemo.preparations == 2 and changed_data != first
    assert (changed_data / "train.txt").read_text() == "a\nB"
    assert prepared_data(demo, work, {"lines": 3}, {}) not in (first, changed_data)  # another parameter
    assert StandInDemo.preparations == 3
    # The preparation code changed (a new version of data_prep).
    source = data_prep.inspect.getsource
    monkeypatch.setattr(data_prep.inspect, "getsource", lambda part: source(part) + "# changed")
    assert prepared_data(demo, work, {"lines": 2}, {}) not in (first, changed_data)
    assert StandInDemo.preparations == 4


def test_the_runs_tag_names_the_plugins_code_not_where_it_lies(tmp_path):
    copy = tmp_path / "rdrop_fairseq"
    shutil.copytree(USER_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    tag = command_tag("fairseq-train", ["--user-dir", USER_DIR, "--seed", 1])
    assert command_tag("fairseq-train", ["--user-dir", copy, "--seed", 1]) == tag
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "loss.cpython-311.pyc").write_bytes(b"byte code")
    assert command_tag("fairseq-train", ["--user-dir", copy, "--seed", 1]) == tag
    with open(copy / "criterions" / "rdrop_common.py", "a") as code:
        code.write("\n# a change\n")
    assert command_tag("fairseq-train", ["--user-dir", copy, "--seed", 1]) != tag


def test_the_runs_tag_names_the_datas_content_not_its_log(tmp_path):
    data = tmp_path / "data-bin"
    data.mkdir()
    (data / "dict.de.txt").write_text("hallo 1\n")
    (data / "preprocess.log").write_text("2026-12-01 10:00:00 | INFO | ...\n")
    tag = command_tag("fairseq-train", [data, "--seed", 1])
    (data / "preprocess.log").write_text("2026-12-02 11:00:00 | INFO | ...\n")
    assert command_tag("fairseq-train", [data, "--seed", 1]) == tag
    (data / "dict.de.txt").write_text("hallo 2\n")
    assert command_tag("fairseq-train", [data, "--seed", 1]) != tag
    assert command_tag("fairseq-train", [data, "--seed", 2]) != command_tag("fairseq-train", [data, "--seed", 1])
