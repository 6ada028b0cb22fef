"""The GPU check: what this project does on a GPU (benchmark, recipes, resume), checked in minutes.

The benchmark on the device (KL table, and the recipes' own models at their own
batch), every recipe's ``SMOKE=1`` run in each half precision the GPU has
(``--fp16``, and ``--bf16`` where it computes in bf16 natively), and one resume
from ``checkpoint_last.pt``. Prints a table and writes JSON. Without a GPU the
same runs on the CPU in float32, the benchmark at its small sizes (a check of
the script itself).

    bash scripts/gpu_check.sh                          # everything
    bash scripts/gpu_check.sh --quick                  # the benchmark's small sizes
    bash scripts/gpu_check.sh --only resume iwslt14    # some checks
    bash scripts/gpu_check.sh --out docs/gpu-check-h200.json

Each check's whole output goes to a log under ``--workdir`` (the table names
it); a check that fails is reported as such and the others still run. The
smoke data is prepared inside the workdir, under a temporary name until it is
complete. The check empties its workdir when it starts, and so takes only a
new or empty folder, or one it made itself. Ctrl-C, SIGTERM and SIGHUP end
every command it started, name the checks done and exit with 128 + the signal.

fairseq's command line takes ``--bf16`` for TPUs: it turns ``tpu`` on with it,
and the Trainer then asks torch_xla for a device (fairseq issue 4696). The
bf16 rows therefore run the recipes with a ``fairseq-train`` of the check's
(``BF16_LAUNCHER``): fairseq's own parser and training, with ``tpu`` left off,
so bf16 trains on the GPU (the model in bfloat16, fp32 master weights in
fairseq's FP16Optimizer, no loss scaling).
"""

import argparse
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from rdrop_experiments import console
from rdrop_experiments.console import log, print_table
from rdrop_experiments.errors import CommandFailed, ExperimentError
from rdrop_experiments.fairseq_logs import parse_record
from rdrop_experiments.fairseq_tools import REPO, fairseq_script
from rdrop_experiments.processes import (
    STOP_SIGNALS,
    interrupt_on_sigterm_and_sighup,
    run_command,
    signal_of,
    stop_running_commands,
)

# name: (training script, its first arguments, extra environment); the checks
# of one group share prepared smoke data, so they run one after another.
RECIPES = {
    "iwslt14": ("examples/translation/train_iwslt14.sh", [], {}),
    "wmt14": ("examples/translation/train_wmt14.sh", [], {}),
    "wikitext103-transformer": ("examples/language_model/train_wikitext103.sh", ["transformer"], {}),
    "wikitext103-adaptive": ("examples/language_model/train_wikitext103.sh", ["adaptive"], {}),
    "cnn_dm": ("examples/summarization/train_cnn_dm.sh", [], {}),
}
GROUPS = [["iwslt14", "resume"], ["wmt14"], ["wikitext103-transformer", "wikitext103-adaptive"], ["cnn_dm"]]
CHECKS = ["benchmark", *RECIPES, "resume"]
RESUME_UPDATES = (2, 4)
# Each group's smoke data: the folder under WORKDIR/smoke, and the preparing
# script with its arguments. Every script takes DATA, and TEXT or WORK for its
# text, so that nothing is written outside the workdir.
SMOKE_DATA = {
    "iwslt14": ("iwslt14", "examples/translation/prepare_iwslt14.sh", ["--smoke"]),
    "resume": ("iwslt14", "examples/translation/prepare_iwslt14.sh", ["--smoke"]),
    "wmt14": ("wmt14", "examples/translation/prepare_wmt14.sh", ["en-de", "--smoke"]),
    "wikitext103-transformer": ("wikitext", "examples/language_model/prepare_wikitext103.sh", ["--smoke"]),
    "wikitext103-adaptive": ("wikitext", "examples/language_model/prepare_wikitext103.sh", ["--smoke"]),
    "cnn_dm": ("cnn_dm", "examples/summarization/prepare_cnn_dm.sh", ["--smoke"]),
}
# What a run in each precision sets: the recipes' FP16 variable, fairseq-train
# flags, and whether fairseq-train is the check's bf16 launcher.
PRECISIONS = {
    "fp32": ({"FP16": "0"}, [], False),
    "fp16": ({"FP16": "1"}, [], False),
    "bf16": ({"FP16": "0"}, ["--bf16"], True),
}
# The file that marks a workdir as the check's own, which it may empty.
MARKER = ".made-by-gpu-check"
# The check's entry point, and the first argument that makes it the bf16 rows' fairseq-train.
ENTRY_POINT = REPO / "scripts" / "gpu_check.py"
BF16_LAUNCHER = "--fairseq-train-bf16"


class WorkdirInUse(ExperimentError):
    """``--workdir`` names a folder with files the check did not make."""


class NotOnCuda(ExperimentError):
    """The bf16 launcher was asked for a TPU, which it exists to avoid."""


def native_bf16():
    """Whether the GPU computes in bfloat16 itself. ``torch.cuda.is_bf16_supported()``
    also says yes where bf16 is emulated (compute capability below 8.0), slowly."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3 has no such argument
        return torch.cuda.get_device_capability() >= (8, 0)


def default_precisions(device):
    """The precisions to train in: float32 on the CPU; fp16, and bf16 where the GPU has it natively."""
    if device == "cpu":
        return ["fp32"]
    return ["fp16", "bf16"] if native_bf16() else ["fp16"]


def bf16_training_args(argv):
    """fairseq-train's arguments for ``argv``, read by fairseq's own parser, with
    ``tpu`` off: that parser turns it on whenever bf16 is (fairseq issue 4696),
    and nothing else in the Trainer ties bf16 to a TPU. Raises :class:`NotOnCuda`
    for ``--tpu``."""
    from fairseq import options

    if "--tpu" in argv:
        raise NotOnCuda("the check's bf16 fairseq-train is for GPUs; run fairseq-train itself for a TPU")
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    args.tpu = False
    return args


def train_in_bf16(argv):
    """fairseq-train (fairseq_cli.train.cli_main) on :func:`bf16_training_args`."""
    # first: importing fairseq_cli.train sets up the log format, which must precede fairseq's own imports
    from fairseq_cli.train import main

    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as distributed_utils

    distributed_utils.call_main(convert_namespace_to_omegaconf(bf16_training_args(argv)), main)


def write_launchers(work):
    """WORK/bin/python, this interpreter, which the recipes call as ``python``, and
    WORK/bf16-bin/fairseq-train, the bf16 launcher; returns both folders."""
    launchers = {"bin/python": f'exec "{sys.executable}" "$@"',
                 "bf16-bin/fairseq-train": f'exec "{sys.executable}" "{ENTRY_POINT}" {BF16_LAUNCHER} "$@"'}
    for name, line in launchers.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\n{line}\n")
        path.chmod(0o755)
    return work / "bin", work / "bf16-bin"


def fresh_workdir(work):
    """An empty WORK holding the check's marker. A folder the check made (it
    holds the marker) is emptied, a new or empty one is taken; anything else
    raises :class:`WorkdirInUse`, for the check deletes only what it made."""
    if work.exists() and not (work / MARKER).is_file():
        if not work.is_dir() or any(work.iterdir()):
            raise WorkdirInUse(
                f"--workdir {work} holds files the GPU check did not make, and the check empties its workdir "
                f"when it starts: name a new or empty folder with --workdir (or remove {work} yourself)")
    elif work.exists():
        shutil.rmtree(work)  # every check starts from nothing, as on a new machine
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("made by scripts/gpu_check.py, which empties this folder when it starts\n")


def recipe_environment(work, precision):
    """The environment of a recipe's run in ``precision``: the check's ``python``
    first, then (bf16) its fairseq-train, then PATH, and fairseq's folder if PATH lacks it."""
    bin_dir, bf16_dir = work / "bin", work / "bf16-bin"
    paths = [str(bin_dir), *([str(bf16_dir)] if PRECISIONS[precision][2] else []), os.environ.get("PATH", "")]
    if shutil.which("fairseq-train") is None and fairseq_script("fairseq-train"):
        paths.append(str(Path(fairseq_script("fairseq-train")).parent))
    return dict(os.environ, PATH=os.pathsep.join(paths), **PRECISIONS[precision][0])


def smoke_data(name, work):
    """The folder of a check's smoke data, WORK/smoke/NAME/data-bin."""
    return work / "smoke" / SMOKE_DATA[name][0] / "data-bin"


def prepare_smoke_data(name, work):
    """Prepares a check's smoke data (:func:`smoke_data`) unless it is there.

    fairseq-preprocess writes the dictionary first, and the recipes take a
    folder with a dictionary for prepared data, so the data is made as
    ``data-bin.partial`` and renamed when complete: an interrupted or failed
    preparation never bears the name the recipes look for, and the next one
    starts afresh. Raises :class:`~rdrop_experiments.errors.CommandFailed` if
    the preparation fails."""
    data = smoke_data(name, work)
    if data.is_dir():
        return data
    folder, script, args = SMOKE_DATA[name]
    partial = data.with_name(data.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    env = dict(recipe_environment(work, "fp32"), DATA=str(partial), TEXT=str(data.parent / "text"),
               WORK=str(data.parent / "work"))
    run_command(["bash", str(REPO / script), *args], work / "logs" / f"prepare-{folder}.log", env=env)
    partial.rename(data)
    return data


def training_figures(output):
    """The last train_inner record's update, loss and KL, from fairseq's json log lines."""
    last = None
    for line in output.splitlines():
        parsed = parse_record(line)
        if parsed and parsed[0] == "train_inner":
            last = parsed[1]
    if last is None:
        return {}
    return {key: last[key] for key in ("num_updates", "loss", "kl_loss") if key in last}


def recipe_command(name, precision, work, max_update=None, save_dir=None):
    """(command, environment) of one SMOKE=1 run of a recipe's training script on the check's smoke data."""
    script, first, recipe_env = RECIPES["iwslt14" if name == "resume" else name]
    env = dict(recipe_environment(work, precision), SMOKE="1", DATA=str(smoke_data(name, work)),
               SAVE_DIR=str(save_dir or work / f"{name}-{precision}"), **recipe_env)
    if max_update is not None:
        env["MAX_UPDATE"] = str(max_update)
    flags = PRECISIONS[precision][1]
    return ["bash", str(REPO / script), *first, *flags, "--log-format", "json", "--log-interval", "1"], env


def run_recipe(name, precision, work, max_update=None, save_dir=None, log_name=None):
    """One SMOKE=1 run of a recipe's training script (which also evaluates)."""
    cmd, env = recipe_command(name, precision, work, max_update, save_dir)
    log_path = work / "logs" / f"{log_name or f'{name}-{precision}'}.log"
    lines = []
    start = time.monotonic()
    try:
        run_command(cmd, log_path, env=env, on_line=lines.append)
        status = "ok"
    except CommandFailed:
        status = "failed"
    output = "".join(lines)
    return {"status": status, "seconds": round(time.monotonic() - start, 1), "log": str(log_path),
            **training_figures(output)}, output


def check_recipe(name, precision, work):
    result, _ = run_recipe(name, precision, work)
    kl = result.get("kl_loss")
    if result["status"] == "ok" and not (kl is not None and math.isfinite(kl) and kl > 0):
        result["status"] = "failed"
        result["why"] = f"the R-Drop KL of the last update is {kl}, not a finite positive number"
    return result


def check_resume(precision, work):
    """Trains RESUME_UPDATES[0] updates, then relaunches with RESUME_UPDATES[1]."""
    save_dir = work / f"resume-{precision}"
    first, second = RESUME_UPDATES
    before, _ = run_recipe("resume", precision, work, first, save_dir, log_name=f"resume-{precision}-first")
    if before["status"] != "ok":
        return before
    result, output = run_recipe("resume", precision, work, second, save_dir)
    result["seconds"] = round(result["seconds"] + before["seconds"], 1)
    loaded = f"Loaded checkpoint {save_dir / 'checkpoint_last.pt'} (epoch 1 @ {first} updates)"
    if result["status"] == "ok" and (loaded not in output or result.get("num_updates") != second):
        result["status"] = "failed"
        result["why"] = f"expected '{loaded}' and {second} updates in the end, got {result.get('num_updates')}"
    return result


def check_benchmark(device, work, quick):
    out = work / f"benchmark-{device}.json"
    # The recipes' models on the CPU too, the code path the GPU runs; there
    # always at the small sizes (bart_large's five arms alone would take 30 GB).
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark_rdrop.py"), "--device", device, "--parts", "kl", "recipes",
           "--workdir", str(work / "benchmark"), "--out", str(out), *(["--quick"] if quick or device == "cpu" else [])]
    start = time.monotonic()
    log_path = work / "logs" / "benchmark.log"
    try:
        run_command(cmd, log_path)
    except CommandFailed:
        return {"status": "failed", "seconds": round(time.monotonic() - start, 1), "log": str(log_path)}
    measured = json.loads(out.read_text())
    largest = [r for r in measured["kl_ratios"] if r["impl"] == "ours"][-1]
    result = {"status": "ok", "seconds": round(time.monotonic() - start, 1), "log": str(log_path),
              "kl_case": f"{largest['tokens']}x{largest['vocab']}",
              "kl_time_vs_official": largest["time_vs_official"],
              "kl_memory_vs_official": largest["extra_memory_vs_official"], "benchmark_json": str(out)}
    if "step" in measured:
        result["step_ratios"] = measured["step"]["ratios"]
    if "recipes" in measured:
        result["recipe_ratios"] = {name: model["ratios"] for name, model in measured["recipes"]["models"].items()}
    return result


def describe(result):
    """The figures of a row of the table."""
    if "why" in result:
        return result["why"]
    if "kl_case" in result:
        memory = result["kl_memory_vs_official"]
        text = (f"KL {result['kl_case']}: time {result['kl_time_vs_official']:.2f}, memory "
                f"{'n/a' if memory is None else f'{memory:.2f}'} of official")
        if "step_ratios" in result:
            ratios = result["step_ratios"]
            text += (f"; step ours/baseline {ratios['ours/baseline step']:.2f}, "
                     f"ours/upstream {ratios['ours/upstream step']:.2f}")
        for name, ratios in result.get("recipe_ratios", {}).items():
            text += (f"; {name} ours/baseline {ratios['ours/baseline step']:.2f}, ours/upstream "
                     f"{ratios['ours/upstream step']:.2f} time")
            if "ours/upstream peak" in ratios:  # measured on CUDA only
                text += f", {ratios['ours/upstream peak']:.2f} memory"
        return text
    if "loss" in result:
        return f"update {int(result['num_updates'])}: loss {result['loss']:.3f}, kl_loss {result['kl_loss']:.3f}"
    return ""


def run_checks(args, work, planned, record, prepared):
    """The benchmark, then the groups of checks side by side, each group
    preparing its data first (its status, seconds and log go into ``prepared``)."""

    def run_group(group):
        names = [name for name in group if any(name == p[0] for p in planned)]
        if not names:
            return
        folder = SMOKE_DATA[names[0]][0]
        start = time.monotonic()
        preparation = {"status": "ok", "log": str(work / "logs" / f"prepare-{folder}.log")}
        try:
            prepare_smoke_data(names[0], work)
        except CommandFailed:
            preparation["status"] = "failed"
        prepared[folder] = {**preparation, "seconds": round(time.monotonic() - start, 1)}
        if preparation["status"] == "failed":
            why = f"preparing the smoke data in {smoke_data(names[0], work)} failed"
            for name, precision in planned:
                if name in names:
                    record({"check": name, "precision": precision, **prepared[folder], "why": why})
            return
        for name, precision in planned:
            if name in names:
                result = check_resume(precision, work) if name == "resume" else check_recipe(name, precision, work)
                record({"check": name, "precision": precision, **result})

    pool = ThreadPoolExecutor(args.jobs or (4 if args.device == "cuda" else 1))
    try:
        # the benchmark alone, so that nothing beside it disturbs its timings
        if "benchmark" in args.only:
            record({"check": "benchmark", "precision": "fp32", **check_benchmark(args.device, work, args.quick)})
        for future in [pool.submit(run_group, group) for group in GROUPS]:
            future.result()
    except KeyboardInterrupt:
        # The commands run in process groups of their own, which the terminal's
        # signals do not reach; a second signal must not cut the stopping short.
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
        stop_running_commands()
        pool.shutdown(cancel_futures=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
        raise
    pool.shutdown()


def main(argv=None):
    """The check's command line, or with BF16_LAUNCHER first, the bf16 rows' fairseq-train; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [BF16_LAUNCHER]:
        try:
            train_in_bf16(argv[1:])
        except NotOnCuda as refused:
            print(f"error: {refused}", file=sys.stderr)
            return 1
        return 0
    console.set_prefix("gpu-check")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=CHECKS, default=CHECKS, help="the checks to run (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS),
                        help="the recipes' precisions (default: fp32 on the CPU; fp16, and bf16 where the GPU "
                             "computes in bf16 natively); bf16 on the CPU checks the bf16 launcher there")
    parser.add_argument("--quick", action="store_true", help="the benchmark's small sizes")
    parser.add_argument("--jobs", type=int, default=None,
                        help="check groups run side by side (default: 4 on a GPU, 1 on the CPU)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "gpu-check",
                        help="emptied when the check starts: a new or empty folder, or one the check made")
    parser.add_argument("--out", type=Path, help="JSON output (default: WORKDIR/gpu-check-DEVICE.json)")
    args = parser.parse_args(argv)
    precisions = args.precisions or default_precisions(args.device)
    if args.device == "cpu" and "fp16" in precisions:
        parser.error("--precisions fp16 needs a GPU: without one the recipes train in float32")
    from tqdm import tqdm

    work = args.workdir.resolve()
    try:
        fresh_workdir(work)
    except WorkdirInUse as refused:
        parser.error(str(refused))
    write_launchers(work)
    out = args.out or work / f"gpu-check-{args.device}.json"
    log(f"logs in {work / 'logs'}")
    planned = [(name, precision) for group in GROUPS for name in group if name in args.only for precision in precisions]
    bar = tqdm(total=len(planned) + ("benchmark" in args.only), unit="check", file=sys.stdout)
    rows, prepared = [], {}

    def record(row):
        rows.append(row)
        bar.set_postfix_str(f"{row['check']} {row['precision']}: {row['status']}")
        bar.update()

    # SIGTERM and SIGHUP (the terminal closed) stop the check as Ctrl-C does.
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    interrupt_on_sigterm_and_sighup()
    try:
        run_checks(args, work, planned, record, prepared)
    except KeyboardInterrupt as interrupt:
        signum = signal_of(interrupt)
        bar.close()
        done = ", ".join(f"{row['check']} ({row['precision']})" for row in rows) or "none"
        log(f"stopped by {STOP_SIGNALS[signum]}; every command it started has ended. "
            f"Checks done: {done}. Logs in {work / 'logs'}")
        return 128 + signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    bar.close()

    order = {name: i for i, name in enumerate(CHECKS)}
    rows.sort(key=lambda row: (order[row["check"]], row["precision"]))
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    summary = {"device": args.device, "gpu": gpu, "torch": torch.__version__,
               "bf16": args.device == "cuda" and native_bf16(), "precisions": precisions, "quick": args.quick,
               "checks": rows, "smoke_data": prepared}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print_table(["check", "precision", "status", "seconds", "figures"],
                [[row["check"], row["precision"], row["status"], str(row["seconds"]), describe(row)] for row in rows])
    failed = [row for row in rows if row["status"] != "ok"]
    for row in failed:
        log(f"{row['check']} ({row['precision']}) failed: see {row['log']}")
    log(f"{gpu}: {len(rows) - len(failed)} of {len(rows)} checks passed; wrote {out}")
    return 1 if failed else 0
