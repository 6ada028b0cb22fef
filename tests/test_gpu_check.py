"""scripts/gpu_check.sh, the check to run on a GPU machine, works on the CPU too:
it trains, resumes, evaluates, prints its table and writes its JSON, and a
check that goes wrong is reported as failed with its log."""

import json
import os
import shlex
import signal
import subprocess
import time

import pytest

from rdrop_experiments import gpu_check
from rdrop_experiments.fairseq_tools import fairseq_script

from .helpers.fairseq_runs import REPO


def run_gpu_check(tmp_path, *args, env=None):
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--workdir", str(tmp_path / "work"),
         "--out", str(tmp_path / "check.json"), *args],
        capture_output=True, text=True, timeout=3000, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
    )
    return proc, json.loads((tmp_path / "check.json").read_text())


def test_the_resume_check_trains_stops_resumes_and_writes_its_row(tmp_path):
    proc, result = run_gpu_check(tmp_path, "--only", "resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert result["device"] == "cpu" and result["torch"].startswith("2.13.0")
    [row] = result["checks"]
    assert (row["check"], row["precision"], row["status"], row["num_updates"]) == ("resume", "fp32", "ok", 4)
    assert row["kl_loss"] > 0
    log = (tmp_path / "work" / "logs" / "resume-fp32.log").read_text()
    assert "(epoch 1 @ 2 updates)" in log
    assert "resume | fp32      | ok     |" in proc.stdout
    assert f"1 of 1 checks passed; wrote {tmp_path / 'check.json'}" in proc.stdout


@pytest.mark.slow
def test_a_check_whose_kl_is_missing_fails_and_names_its_log(tmp_path):
    # RDROP_ALPHA=0 trains the baseline, which logs no KL
    proc, result = run_gpu_check(tmp_path, "--only", "iwslt14", env={"RDROP_ALPHA": "0"})
    assert proc.returncode == 1
    [row] = result["checks"]
    assert row["status"] == "failed" and "KL of the last update is None" in row["why"]
    assert f"iwslt14 (fp32) failed: see {tmp_path / 'work' / 'logs' / 'iwslt14-fp32.log'}" in proc.stdout


@pytest.mark.slow
def test_every_check_passes_on_the_cpu(tmp_path):
    proc, result = run_gpu_check(tmp_path, "--quick")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert [row["check"] for row in result["checks"]] == [
        "benchmark", "iwslt14", "wmt14", "wikitext103-transformer", "wikitext103-adaptive", "cnn_dm", "resume"]
    assert all(row["status"] == "ok" for row in result["checks"])
    benchmark = result["checks"][0]
    assert 0 < benchmark["kl_time_vs_official"] and 0 < benchmark["kl_memory_vs_official"] < 1


@pytest.mark.parametrize("signum, name", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM"),
                                          (signal.SIGHUP, "SIGHUP")])
def test_ctrl_c_sigterm_and_sighup_end_every_command_the_check_started(tmp_path, signum, name):
    work = tmp_path / "work"
    proc = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--only", "iwslt14", "--workdir", str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    try:
        log = work / "logs" / "iwslt14-fp32.log"
        deadline = time.monotonic() + 300
        while "fairseq-train" not in running_commands(work) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "fairseq-train" in running_commands(work), log.read_text()[-2000:] if log.exists() else "no log"
        proc.send_signal(signum)
        output = proc.communicate(timeout=60)[0]
    finally:
        stop(proc)
    assert proc.returncode == 128 + signum, output[-2000:]
    assert f"stopped by {name}; every command it started has ended. Checks done: none." in output
    time.sleep(1)
    assert running_commands(work) == "", "a command of the check outlived it"


def test_a_preparation_stopped_after_the_dictionary_leaves_nothing_the_recipes_would_take_for_data(tmp_path):
    # fairseq-preprocess writes the dictionary first; this one then hangs, as if
    # binarizing took long, so that the check is stopped with the dictionary written.
    fake = tmp_path / "fake-bin" / "fairseq-preprocess"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\n"{fairseq_script("fairseq-preprocess")}" "$@" || exit\nexec sleep 600\n')
    fake.chmod(0o755)
    work = tmp_path / "work"
    proc = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--only", "iwslt14", "--workdir", str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}"),
    )
    try:
        deadline = time.monotonic() + 300
        while not list(work.rglob("dict.de.txt")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert list(work.rglob("dict.de.txt")), "the preparation wrote no dictionary inside the workdir"
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0]
    finally:
        stop(proc)
    assert proc.returncode == 130, output[-2000:]
    # the recipes take WORKDIR/smoke/iwslt14/data-bin for prepared data if it holds a dictionary
    assert not (work / "smoke" / "iwslt14" / "data-bin").exists()
    assert [path.parent.name for path in work.rglob("dict.de.txt")] == ["data-bin.partial"]
    assert running_commands(work) == ""


def test_a_workdir_holding_other_files_is_refused_and_loses_nothing(tmp_path):
    work = tmp_path / "mine"
    (work / "results").mkdir(parents=True)
    (work / "results" / "notes.txt").write_text("keep me")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--only", "resume", "--workdir", str(work)],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (f"--workdir {work} holds files the GPU check did not make, and the check empties its workdir when it "
            "starts: name a new or empty folder with --workdir") in proc.stderr
    assert [p.relative_to(work).as_posix() for p in sorted(work.rglob("*"))] == ["results", "results/notes.txt"]
    assert (work / "results" / "notes.txt").read_text() == "keep me"


def test_the_check_empties_a_workdir_it_made_and_takes_a_new_or_empty_one(tmp_path):
    made = tmp_path / "made"
    gpu_check.fresh_workdir(made)
    (made / "logs").mkdir()
    (made / "logs" / "old.log").write_text("from the last check")
    gpu_check.fresh_workdir(made)
    assert [p.name for p in made.iterdir()] == [gpu_check.MARKER]
    empty = tmp_path / "empty"
    empty.mkdir()
    gpu_check.fresh_workdir(empty)
    assert [p.name for p in empty.iterdir()] == [gpu_check.MARKER]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("mine")
    with pytest.raises(gpu_check.WorkdirInUse):
        gpu_check.fresh_workdir(foreign)
    assert [p.name for p in foreign.iterdir()] == ["data.txt"]


def test_the_bf16_rows_fairseq_train_reads_bf16_as_bfloat16_on_the_gpu_not_as_a_tpu(tmp_path):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    work = tmp_path / "work"
    gpu_check.fresh_workdir(work)
    gpu_check.write_launchers(work)
    # the exact command line of the iwslt14 bf16 row, as the recipe prints it with DRY_RUN=1 (for a GPU)
    cmd, env = gpu_check.recipe_command("iwslt14", "bf16", work)
    proc = subprocess.run(cmd, env=dict(env, DRY_RUN="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("dry run: ") and " --bf16 " in line]
    program, *argv = shlex.split(line[len("dry run: "):])
    assert program == str(work / "bf16-bin" / "fairseq-train") and os.access(program, os.X_OK)
    assert "--fp16" not in argv and "--tpu" not in argv
    # fairseq's parser alone makes it a TPU run (fairseq issue 4696) ...
    plain = options.parse_args_and_arch(options.get_training_parser(), argv)
    assert (plain.bf16, plain.tpu) == (True, True)
    # ... the check's fairseq-train, the same parser with tpu left off, a GPU run in bf16
    args = gpu_check.bf16_training_args(argv)
    assert (args.bf16, args.tpu, args.fp16, args.cpu) == (True, False, False, False)
    cfg = convert_namespace_to_omegaconf(args)
    assert (cfg.common.bf16, cfg.common.tpu, cfg.distributed_training.tpu) == (True, False, False)
    with pytest.raises(gpu_check.NotOnCuda):
        gpu_check.bf16_training_args([*argv, "--tpu"])


def test_a_recipe_trains_in_bf16_through_the_checks_fairseq_train_without_a_tpu(tmp_path):
    # bf16 on the CPU: the GPU's code path of the launcher, with the model in bfloat16
    proc, result = run_gpu_check(tmp_path, "--only", "iwslt14", "--precisions", "bf16")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [row] = result["checks"]
    assert (row["check"], row["precision"], row["status"], row["num_updates"]) == ("iwslt14", "bf16", "ok", 3)
    assert row["kl_loss"] > 0
    log = (tmp_path / "work" / "logs" / "iwslt14-bf16.log").read_text()
    assert f"+ {tmp_path / 'work' / 'bf16-bin' / 'fairseq-train'} " in log
    assert "'tpu': False, 'bf16': True" in log


def test_bf16_is_reported_only_where_the_gpu_computes_in_it_natively(monkeypatch):
    import torch

    calls = []

    def is_bf16_supported(including_emulation=True):
        calls.append(including_emulation)
        return including_emulation  # a GPU that only emulates bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert gpu_check.default_precisions("cuda") == ["fp16"] and calls == [False]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # torch before 2.3
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert gpu_check.default_precisions("cuda") == ["fp16"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert gpu_check.default_precisions("cuda") == ["fp16", "bf16"]
    assert gpu_check.default_precisions("cpu") == ["fp32"]


def stop(proc):
    """Ends a check a test left running (a failed assertion) as Ctrl-C does."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def running_commands(work):
    """The command lines of running processes that name the check's folder."""
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return "\n".join(line for line in ps.splitlines() if str(work) in line and "ps -ww" not in line)
