"""What this project does on a GPU, checked in minutes: the benchmark on the
device (KL table and training step), every recipe's ``SMOKE=1`` run in each
half precision the GPU has (``--fp16``, and ``--bf16`` where it has bf16), and
one resume from ``checkpoint_last.pt``. Prints a table and writes JSON. Without
a GPU the same runs on the CPU in float32 (a check of the script itself).

    bash scripts/gpu_check.sh                          # everything
    bash scripts/gpu_check.sh --only resume iwslt14    # some checks
    bash scripts/gpu_check.sh --out docs/gpu-check-h200.json

Each check's whole output goes to a log under ``--workdir`` (the table names
it); a check that fails is reported as such and the others still run.
"""

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.demo_support import run_command, stop_running_commands  # noqa: E402
from scripts.fairseq_logs import parse_record  # noqa: E402

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


def precisions(device):
    """The precisions to train in: fairseq's half-precision flags on a GPU."""
    if device == "cpu":
        return {"fp32": ({"FP16": "0"}, [])}
    found = {"fp16": ({"FP16": "1"}, [])}
    if torch.cuda.is_bf16_supported():
        found["bf16"] = ({"FP16": "0"}, ["--bf16"])
    return found


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


def run_recipe(name, precision, env_extra, flags, work, max_update=None, save_dir=None):
    """One SMOKE=1 run of a recipe's training script (which also evaluates)."""
    script, first, recipe_env = RECIPES["iwslt14" if name == "resume" else name]
    save_dir = save_dir or work / f"{name}-{precision}"
    log_path = work / "logs" / f"{name}-{precision}.log"
    env = dict(os.environ, SMOKE="1", SAVE_DIR=str(save_dir), **recipe_env, **env_extra)
    if max_update is not None:
        env["MAX_UPDATE"] = str(max_update)
    lines = []
    cmd = ["bash", str(REPO / script), *first, *flags, "--log-format", "json", "--log-interval", "1"]
    start = time.monotonic()
    try:
        run_command(cmd, log_path, env=env, on_line=lines.append)
        status = "ok"
    except SystemExit:
        status = "failed"
    output = "".join(lines)
    return {"status": status, "seconds": round(time.monotonic() - start, 1), "log": str(log_path),
            **training_figures(output)}, output


def check_recipe(name, precision, env_extra, flags, work):
    result, _ = run_recipe(name, precision, env_extra, flags, work)
    kl = result.get("kl_loss")
    if result["status"] == "ok" and not (kl is not None and math.isfinite(kl) and kl > 0):
        result["status"] = "failed"
        result["why"] = f"the R-Drop KL of the last update is {kl}, not a finite positive number"
    return result


def check_resume(precision, env_extra, flags, work):
    """Trains RESUME_UPDATES[0] updates, then relaunches with RESUME_UPDATES[1]."""
    save_dir = work / f"resume-{precision}"
    first, second = RESUME_UPDATES
    before, _ = run_recipe("resume", f"{precision}-first", env_extra, flags, work, first, save_dir)
    if before["status"] != "ok":
        return before
    result, output = run_recipe("resume", precision, env_extra, flags, work, second, save_dir)
    result["seconds"] = round(result["seconds"] + before["seconds"], 1)
    loaded = f"Loaded checkpoint {save_dir / 'checkpoint_last.pt'} (epoch 1 @ {first} updates)"
    if result["status"] == "ok" and (loaded not in output or result.get("num_updates") != second):
        result["status"] = "failed"
        result["why"] = f"expected '{loaded}' and {second} updates in the end, got {result.get('num_updates')}"
    return result


def check_benchmark(device, work, quick):
    out = work / f"benchmark-{device}.json"
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark_rdrop.py"), "--device", device,
           "--workdir", str(work / "benchmark"), "--out", str(out), *(["--quick"] if quick else [])]
    start = time.monotonic()
    log_path = work / "logs" / "benchmark.log"
    try:
        run_command(cmd, log_path)
    except SystemExit:
        return {"status": "failed", "seconds": round(time.monotonic() - start, 1), "log": str(log_path)}
    measured = json.loads(out.read_text())
    largest = [r for r in measured["kl_ratios"] if r["impl"] == "ours"][-1]
    return {"status": "ok", "seconds": round(time.monotonic() - start, 1), "log": str(log_path),
            "kl_case": f"{largest['tokens']}x{largest['vocab']}",
            "kl_time_vs_official": largest["time_vs_official"],
            "kl_memory_vs_official": largest["extra_memory_vs_official"],
            "step_ratios": measured["step"]["ratios"], "benchmark_json": str(out)}


def describe(result):
    """The figures of a row of the table."""
    if "why" in result:
        return result["why"]
    if "kl_case" in result:
        ratios = result["step_ratios"]
        return (f"KL {result['kl_case']}: time {result['kl_time_vs_official']:.2f}, memory "
                f"{result['kl_memory_vs_official']:.2f} of official; step ours/baseline "
                f"{ratios['ours/baseline step']:.2f}, ours/upstream {ratios['ours/upstream step']:.2f}")
    if "loss" in result:
        return f"update {int(result['num_updates'])}: loss {result['loss']:.3f}, kl_loss {result['kl_loss']:.3f}"
    return ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=CHECKS, default=CHECKS, help="the checks to run (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="the benchmark's small sizes")
    parser.add_argument("--jobs", type=int, default=None,
                        help="check groups run side by side (default: 4 on a GPU, 1 on the CPU)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "gpu-check")
    parser.add_argument("--out", type=Path, help="JSON output (default: WORKDIR/gpu-check-DEVICE.json)")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    work = args.workdir.resolve()
    if work.exists():
        shutil.rmtree(work)  # every check starts from nothing, as on a new machine
    work.mkdir(parents=True)
    out = args.out or work / f"gpu-check-{args.device}.json"
    tqdm.write(f"[gpu-check] logs in {work / 'logs'}")
    planned = [(name, precision, setting) for group in GROUPS for name in group if name in args.only
               for precision, setting in precisions(args.device).items()]
    bar = tqdm(total=len(planned) + ("benchmark" in args.only), unit="check", file=sys.stdout)
    rows = []

    def record(row):
        rows.append(row)
        bar.set_postfix_str(f"{row['check']} {row['precision']}: {row['status']}")
        bar.update()

    def run_group(group):
        for name, precision, (env_extra, flags) in planned:
            if name in group:
                check = check_resume if name == "resume" else lambda *a: check_recipe(name, *a)
                record({"check": name, "precision": precision, **check(precision, env_extra, flags, work)})

    pool = ThreadPoolExecutor(args.jobs or (4 if args.device == "cuda" else 1))
    try:
        # the benchmark alone, so that nothing beside it disturbs its timings
        if "benchmark" in args.only:
            record({"check": "benchmark", "precision": "fp32", **check_benchmark(args.device, work, args.quick)})
        for future in [pool.submit(run_group, group) for group in GROUPS]:
            future.result()
    except KeyboardInterrupt:
        # the commands run in process groups of their own, which Ctrl-C does not reach
        stop_running_commands()
        pool.shutdown(cancel_futures=True)
        bar.close()
        done = ", ".join(f"{row['check']} ({row['precision']})" for row in rows) or "none"
        print(f"[gpu-check] stopped by Ctrl-C; every command it started has ended. Checks done: {done}. "
              f"Logs in {work / 'logs'}")
        return 130
    pool.shutdown()
    bar.close()

    order = {name: i for i, name in enumerate(CHECKS)}
    rows.sort(key=lambda row: (order[row["check"]], row["precision"]))
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    summary = {"device": args.device, "gpu": gpu, "torch": torch.__version__,
               "bf16": args.device == "cuda" and torch.cuda.is_bf16_supported(), "quick": args.quick, "checks": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    width = max(len(row["check"]) for row in rows)
    print(f"\n{'check':<{width}} | precision | status | seconds | figures")
    print(f"{'-' * width} | --------- | ------ | ------- | -------")
    for row in rows:
        print(f"{row['check']:<{width}} | {row['precision']:<9} | {row['status']:<6} | {row['seconds']:>7} | "
              f"{describe(row)}")
    failed = [row for row in rows if row["status"] != "ok"]
    for row in failed:
        print(f"[gpu-check] {row['check']} ({row['precision']}) failed: see {row['log']}")
    print(f"[gpu-check] {gpu}: {len(rows) - len(failed)} of {len(rows)} checks passed; wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
