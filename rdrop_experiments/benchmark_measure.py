"""The benchmark's measurements: time and peak memory taken alike for every arm, a case alone in a fresh process."""

import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from rdrop_experiments.fairseq_tools import REPO, thread_env
from rdrop_experiments.processes import run_command

# Every block above this many bytes goes back to the system when freed.
MMAP_THRESHOLD = 65536
# The benchmark's entry point, which a fresh process runs one case with (``--child``).
ENTRY_POINT = REPO / "scripts" / "benchmark_rdrop.py"


class Meter:
    """Wall time and peak memory on one device, the same way for every arm."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn):
        """Seconds one call of ``fn`` takes (CUDA events on a GPU)."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.sync()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def start_peak(self):
        """Forgets earlier peaks; returns the memory in use now, in MiB."""
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device) / 2**20
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return _proc_status_mib("VmRSS")

    def peak(self):
        """Peak memory since ``start_peak``, in MiB."""
        self.sync()
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _proc_status_mib("VmHWM")


def _proc_status_mib(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) / 1024


def run_child(spec, threads, log_path):
    """Runs one measurement in a fresh process (clean peak memory), its whole
    output appended to ``log_path``, and returns its result. Raises
    :class:`~rdrop_experiments.errors.CommandFailed` if the process fails."""
    env = dict(thread_env(threads), MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    with tempfile.TemporaryDirectory(prefix="benchmark-case-") as folder:
        result = Path(folder) / "result.json"
        run_command([sys.executable, ENTRY_POINT, "--child", json.dumps(spec), "--child-result", result,
                     "--threads", threads], log_path, env=env)
        return json.loads(result.read_text())


def paired_ratio(times, reference):
    """The median of the per-batch ratios of an arm's step times to a reference arm's."""
    return statistics.median(t / r for t, r in zip(times, reference))


def checkpointed_layers(model):
    """How many modules fairseq's checkpoint wrapper has wrapped."""
    return sum(hasattr(module, "precheckpoint_forward") for module in model.modules())


def arm_timing(times, tokens, model):
    """One arm's step figures: median seconds, target tokens per second over all
    its steps, the times themselves and how many layers it checkpoints."""
    return {"median_step_s": statistics.median(times), "target_tokens_per_s": sum(tokens) / sum(times),
            "times": times, "checkpointed_layers": checkpointed_layers(model)}
