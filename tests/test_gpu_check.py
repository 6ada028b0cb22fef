"""scripts/gpu_check.sh, the check to run on a GPU machine, works on the CPU too:
it trains, resumes, evaluates, prints its table and writes its JSON, and a
check that goes wrong is reported as failed with its log."""

import json
import os
import signal
import subprocess
import time

import pytest

from .cli import REPO


def gpu_check(tmp_path, *args, env=None):
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--workdir", str(tmp_path / "work"),
         "--out", str(tmp_path / "check.json"), *args],
        capture_output=True, text=True, timeout=3000, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
    )
    return proc, json.loads((tmp_path / "check.json").read_text())


def test_the_resume_check_trains_stops_resumes_and_writes_its_row(tmp_path):
    proc, result = gpu_check(tmp_path, "--only", "resume")
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
    proc, result = gpu_check(tmp_path, "--only", "iwslt14", env={"RDROP_ALPHA": "0"})
    assert proc.returncode == 1
    [row] = result["checks"]
    assert row["status"] == "failed" and "KL of the last update is None" in row["why"]
    assert f"iwslt14 (fp32) failed: see {tmp_path / 'work' / 'logs' / 'iwslt14-fp32.log'}" in proc.stdout


@pytest.mark.slow
def test_every_check_passes_on_the_cpu(tmp_path):
    proc, result = gpu_check(tmp_path, "--quick")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert [row["check"] for row in result["checks"]] == [
        "benchmark", "iwslt14", "wmt14", "wikitext103-transformer", "wikitext103-adaptive", "cnn_dm", "resume"]
    assert all(row["status"] == "ok" for row in result["checks"])
    benchmark = result["checks"][0]
    assert 0 < benchmark["kl_time_vs_official"] and 0 < benchmark["kl_memory_vs_official"] < 1


def test_ctrl_c_ends_every_command_the_check_started(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--only", "iwslt14", "--workdir", str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    log = work / "logs" / "iwslt14-fp32.log"
    deadline = time.monotonic() + 300
    while "fairseq-train" not in running_commands(work) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "fairseq-train" in running_commands(work), log.read_text()[-2000:]
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output[-2000:]
    assert "stopped by Ctrl-C; every command it started has ended. Checks done: none." in output
    time.sleep(1)
    assert running_commands(work) == "", "a command of the check outlived it"


def running_commands(work):
    """The command lines of running processes that name the check's folder."""
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return "\n".join(line for line in ps.splitlines() if str(work) in line and "ps -ww" not in line)
