"""What R-Drop costs here: the KL term against the official formula, and a
full training step against the baseline and upstream fairseq's R-Drop.

    python scripts/benchmark_rdrop.py                  # CPU: tables on stdout, JSON in --out
    python scripts/benchmark_rdrop.py --device cuda    # on a GPU: KL table and the recipes' models
    python scripts/benchmark_rdrop.py --quick          # small sizes, a smoke test
    python scripts/benchmark_rdrop.py --parts kl --kl-sizes 1024x250000   # one row of the KL table

Part 1, the KL term alone, forward + backward, at N target tokens per pass and
vocabulary V (the doubled batch has 2N rows, 10 % of them padding):

- ``official``: the formula of the official R-Drop code, which upstream
  fairseq's ``label_smoothed_cross_entropy_with_rdrop`` repeats: log_softmax
  and softmax of the (2N, V) logits, ``kl_div`` both ways, ``masked_fill``,
  sum, halve. Its input is the logits.
- ``ours``: ``symmetric_kl_of_halves`` on the (2N, V) log-probabilities, as
  the criterion calls it: the cross-entropy has computed them already, so
  this is what the KL adds to a training step.
- ``ours+lsm``: the same from the logits, charging a log-softmax to the KL.

Each case runs in a fresh process. Memory is the peak above the inputs: on
CUDA ``max_memory_allocated``; on CPU the kernel's peak-RSS mark (VmHWM),
reset once the inputs exist, with glibc told to return every block above
64 KiB to the system when it is freed (``MALLOC_MMAP_THRESHOLD_``), so that
RSS follows the tensors alive. The gradient of the input is part of both.

Part 2, one training step (forward, criterion, backward, Adam) on real
Multi30k batches (sentencepiece 8000, up to --max-tokens per batch) with a
transformer of the IWSLT14 class, shrunk for a CPU (3+3 layers, width 256,
FFN 1024, 4 heads, dropout 0.3), identical weights in every arm:
``baseline`` (fairseq's label_smoothed_cross_entropy), ``two-passes`` (the
baseline on the batch concatenated with itself), ``ours``
(label_smoothed_cross_entropy_rdrop, alpha 5), ``upstream``
(label_smoothed_cross_entropy_with_rdrop, alpha 5), the baseline and ours
with fairseq's ``--checkpoint-activations`` (every layer's activations
recomputed in backward), and ours on each batch's two halves of sentences
with one optimizer step, as halving --max-tokens and doubling --update-freq
does. The arms take turns on every batch, in rotating order, so machine noise
hits them alike; ratios are medians of per-batch ratios. Peak RSS comes from
one fresh process per arm running the same batches (same VmHWM method); on
CUDA, max_memory_allocated.

Part 3 (``--parts recipes``; on CUDA the step part by default, in place of
part 2), the recipes' own models at their own per-GPU batch, in fairseq's
Trainer (fp16 on CUDA, float32 on the CPU), on batches of random tokens of
each recipe's dictionary size: ``transformer_iwslt_de_en`` at 4,096 tokens,
``transformer_vaswani_wmt_en_de_big`` at the WMT recipe's 4,096 per GPU and
``bart_large`` at the CNN/DailyMail recipe's 1,024 (one 1,024-token article),
each with its recipe's dropout, shared embeddings and alpha; arms
``baseline``, ``two-passes``, ``ours``, ``upstream`` and ``ours-checkpointed``
(``--checkpoint-activations``), identical weights, taking turns on every batch
as in part 2. Memory on CUDA: ``max_memory_allocated`` during a step above the
memory in use at its start, plus what the arm holds between steps (its
weights, fp32 master weights, gradients and Adam's state), i.e. the arm's peak
as if alone (on the CPU memory is not measured here: the arms share one
process); the five arms of a model are on the GPU together (bart_large's
hold an estimated 8 GB each: ``--recipe-models`` picks fewer models). With ``--quick``:
two batches, two timed rounds; on the CPU, also the models shrunk (one layer
each side, width 32) and batches of 128 tokens, which checks the code path.
"""

import argparse
import copy
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rdrop_fairseq.loss import symmetric_kl_of_halves  # noqa: E402
from scripts.demo_support import USER_DIR  # noqa: E402

# The last: an mBART-sized vocabulary at the most tokens for which the official
# formula's 11 GiB fit in a 23 GiB machine.
KL_SIZES = [(2048, 8000), (2048, 32000), (8192, 8000), (8192, 32000), (1024, 250000)]
KL_IMPLS = ("official", "ours", "ours+lsm")
BASELINE = ["--criterion", "label_smoothed_cross_entropy"]
OURS = ["--criterion", "label_smoothed_cross_entropy_rdrop", "--rdrop-alpha", "5"]
STEP_ARMS = {
    "baseline": BASELINE,
    # the floor R-Drop cannot go below: the baseline on [x; x], i.e. the two
    # passes without the KL, so ours/two-passes is what our criterion adds
    "two-passes": BASELINE,
    "ours": OURS,
    "upstream": ["--criterion", "label_smoothed_cross_entropy_with_rdrop", "--rdrop-alpha", "5"],
    "baseline-checkpointed": [*BASELINE, "--checkpoint-activations"],
    "ours-checkpointed": [*OURS, "--checkpoint-activations"],
    # the memory-saving alternative: half the batch per forward, --update-freq 2
    "ours-update-freq-2": OURS,
}
# (arm, reference) pairs whose paired step-time ratio, and peak-memory ratios, the step part reports
STEP_TIME_RATIOS = [
    ("ours", "baseline"), ("two-passes", "baseline"), ("ours", "two-passes"), ("ours", "upstream"),
    ("upstream", "baseline"), ("baseline-checkpointed", "baseline"), ("ours-checkpointed", "baseline"),
    ("ours-checkpointed", "ours"), ("ours-update-freq-2", "ours"), ("ours-checkpointed", "ours-update-freq-2"),
]
STEP_MEMORY_RATIOS = [
    ("ours", "upstream"), ("ours", "baseline"), ("baseline-checkpointed", "baseline"),
    ("ours-checkpointed", "baseline"), ("ours-checkpointed", "ours"), ("ours-update-freq-2", "ours"),
    ("ours-checkpointed", "ours-update-freq-2"),
]
MODEL = {"layers": 3, "embed_dim": 256, "ffn_dim": 1024, "heads": 4, "vocab_size": 8000}
# Every block above this many bytes goes back to the system when freed.
MMAP_THRESHOLD = 65536


# ---------------------------------------------------------------- measurement


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


def run_child(spec, threads):
    """Runs one measurement in a fresh process (clean peak memory) and returns its JSON."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec), "--threads", str(threads)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark case {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------ part 1: the KL


def official_kl(logits, pad_mask):
    """The official R-Drop code's KL (and upstream fairseq's), from the doubled logits."""
    lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
    probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    p, q = torch.split(lprobs, lprobs.size(0) // 2, dim=0)
    p_tec, q_tec = torch.split(probs, probs.size(0) // 2, dim=0)
    p_loss = F.kl_div(p, q_tec, reduction="none")
    q_loss = F.kl_div(q, p_tec, reduction="none")
    p_loss.masked_fill_(pad_mask, 0.0)
    q_loss.masked_fill_(pad_mask, 0.0)
    return (p_loss.sum() + q_loss.sum()) / 2


def kl_functions(keep):
    pad_mask = ~keep.unsqueeze(-1)
    return {
        "official": lambda logits: official_kl(logits, pad_mask),
        "ours": lambda lprobs: symmetric_kl_of_halves(lprobs, keep).sum(),
        "ours+lsm": lambda logits: symmetric_kl_of_halves(F.log_softmax(logits, -1, dtype=torch.float32), keep).sum(),
    }


def kl_case(impl, tokens, vocab, device, reps):
    meter = Meter(device)
    gen = torch.Generator(device=device).manual_seed(0)
    keep = torch.rand(tokens, generator=gen, device=device) > 0.1
    inputs = torch.randn(2 * tokens, vocab, generator=gen, device=device).mul_(3.0)
    if impl == "ours":
        inputs = inputs.log_softmax(-1)
    inputs.requires_grad_()

    def step(x, keep):
        x.grad = None
        kl_functions(keep)[impl](x).backward()

    # loads kernels and allocator pools before the peak is taken
    step(inputs.detach()[:64].clone().requires_grad_(), keep[:32])
    in_use = meter.start_peak()
    step(inputs, keep)
    extra = meter.peak() - in_use
    times = [meter.time(lambda: step(inputs, keep)) for _ in range(reps)]
    return {"peak_extra_mib": round(extra, 1), "times": times}


def benchmark_kl(args):
    sizes = args.kl_sizes or ([(256, 1000), (512, 4000)] if args.quick else KL_SIZES)
    rows = []
    for tokens, vocab in sizes:
        for impl in KL_IMPLS:
            result = run_child({"part": "kl", "impl": impl, "tokens": tokens, "vocab": vocab,
                                "device": args.device, "reps": args.kl_reps}, args.threads)
            rows.append({"tokens": tokens, "vocab": vocab, "impl": impl,
                         "median_s": statistics.median(result["times"]), **result})
            log(f"KL N={tokens} V={vocab} {impl}: {rows[-1]['median_s']:.3f} s, "
                f"+{result['peak_extra_mib']:.0f} MiB")
    return rows


# -------------------------------------------------------- part 2: the step


def prepare_multi30k(work, vocab_size, train_pairs=None):
    """The translation demo's sentencepiece + binarization of Multi30k (all of it by default)."""
    spec = importlib.util.spec_from_file_location("demo_multi30k", REPO / "examples/translation/demo_multi30k.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo.prepare_data(work / f"data-{vocab_size}-{train_pairs or 'all'}", vocab_size, train_pairs, None)


def build_arm(bin_dir, arm, model_size, device):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    m = model_size
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(bin_dir), "--user-dir", str(USER_DIR), "--task", "translation", "--source-lang", "en",
        "--target-lang", "de", "--arch", "transformer_iwslt_de_en", "--share-all-embeddings",
        "--encoder-layers", str(m["layers"]), "--decoder-layers", str(m["layers"]),
        "--encoder-embed-dim", str(m["embed_dim"]), "--decoder-embed-dim", str(m["embed_dim"]),
        "--encoder-ffn-embed-dim", str(m["ffn_dim"]), "--decoder-ffn-embed-dim", str(m["ffn_dim"]),
        "--encoder-attention-heads", str(m["heads"]), "--decoder-attention-heads", str(m["heads"]),
        "--dropout", "0.3", "--label-smoothing", "0.1", "--seed", "1", *STEP_ARMS[arm],
    ])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    torch.manual_seed(1)
    model = task.build_model(cfg.model).to(device)
    model.train()
    return task, model, task.build_criterion(cfg.criterion)


def real_batches(task, max_tokens, count, device):
    from fairseq import utils

    itr = task.get_batch_iterator(
        dataset=task.dataset("train"), max_tokens=max_tokens, max_positions=(1024, 1024),
        seed=1, required_batch_size_multiple=8,
    ).next_epoch_itr(shuffle=True)
    return [utils.move_to_cuda(next(itr), device) if device.startswith("cuda") else next(itr) for _ in range(count)]


class StepArm:
    def __init__(self, name, model, criterion):
        self.model, self.criterion = model, criterion
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
        self.doubles_batch = name == "two-passes"
        self.splits_batch = name == "ours-update-freq-2"

    def step(self, sample):
        if self.doubles_batch:
            sample = doubled(sample)
        self.optimizer.zero_grad(set_to_none=True)
        # fairseq's criteria return sums, so the micro-batches' gradients add up
        # to the whole batch's, as fairseq's Trainer accumulates them.
        for micro_batch in (halves(sample, self.criterion.padding_idx) if self.splits_batch else [sample]):
            # upstream's criterion rewrites sample["net_input"] in place: every
            # arm gets a fresh top-level dict, so all see the same batch.
            micro_batch = {**micro_batch, "net_input": dict(micro_batch["net_input"])}
            loss, _, _ = self.criterion(self.model, micro_batch)
            loss.backward()
        self.optimizer.step()


def doubled(sample):
    """The batch concatenated with itself, as one plain training batch."""
    from rdrop_fairseq.criterions.rdrop_common import concat_batch_with_itself

    batch_size = sample["target"].size(0)
    return {
        **sample,
        "net_input": concat_batch_with_itself(sample["net_input"], batch_size),
        "target": torch.cat([sample["target"], sample["target"]]),
        "ntokens": 2 * sample["ntokens"],
        "nsentences": 2 * sample["nsentences"],
    }


def halves(sample, pad):
    """The batch as two batches of its first and second half of sentences.

    Every tensor whose first dimension is the batch is cut in two; the padding
    columns stay, which costs little in fairseq's batches of similar lengths.
    """
    from fairseq import utils

    batch_size = sample["target"].size(0)
    cut = (batch_size + 1) // 2
    parts = []
    for rows in (slice(0, cut), slice(cut, batch_size)):
        part = utils.apply_to_sample(lambda t: t[rows] if t.dim() > 0 and t.size(0) == batch_size else t,
                                     {k: v for k, v in sample.items() if k not in ("ntokens", "nsentences")})
        part["nsentences"] = part["target"].size(0)
        part["ntokens"] = int(part["target"].ne(pad).sum())
        parts.append(part)
    return parts


def checkpointed_layers(model):
    """How many modules fairseq's checkpoint wrapper has wrapped."""
    return sum(hasattr(module, "precheckpoint_forward") for module in model.modules())


def step_memory_case(arm, bin_dir, model_size, max_tokens, batches, device):
    meter = Meter(device)
    task, model, criterion = build_arm(Path(bin_dir), arm, model_size, device)
    samples = real_batches(task, max_tokens, batches, device)
    runner = StepArm(arm, model, criterion)
    runner.step(samples[0])  # optimizer state exists before the peak is taken
    in_use = meter.start_peak()
    for sample in samples:
        runner.step(sample)
    peak = meter.peak()
    return {"peak_mib": round(peak, 1), "before_steps_mib": round(in_use, 1), "peak_extra_mib": round(peak - in_use, 1)}


def benchmark_step(args):
    if args.quick:
        model_size = dict(MODEL, layers=1, embed_dim=64, ffn_dim=128, vocab_size=1000)
        bin_dir = prepare_multi30k(args.workdir, model_size["vocab_size"], train_pairs=2000)
    else:
        model_size = MODEL
        bin_dir = prepare_multi30k(args.workdir, MODEL["vocab_size"])
    device = args.device
    arms = {}
    for name in STEP_ARMS:
        task, model, criterion = build_arm(bin_dir, name, model_size, device)
        arms[name] = (task, model, criterion)
    # identical weights in every arm
    state = copy.deepcopy(arms["baseline"][1].state_dict())
    runners = {}
    for name, (task, model, criterion) in arms.items():
        model.load_state_dict(state)
        runners[name] = StepArm(name, model, criterion)
    samples = real_batches(arms["baseline"][0], args.max_tokens, args.batches, device)
    meter = Meter(device)
    names = list(runners)
    times = {name: [] for name in names}
    for rep in range(args.step_reps + 1):  # the first round warms up and is dropped
        for index, sample in enumerate(samples):
            shift = (rep * len(samples) + index) % len(names)
            for name in names[shift:] + names[:shift]:
                seconds = meter.time(lambda: runners[name].step(sample))
                if rep:
                    times[name].append(seconds)
        log(f"step round {rep + 1}/{args.step_reps + 1} done")
    tokens = [s["ntokens"] for s in samples] * args.step_reps
    memory = {
        name: run_child({"part": "step-memory", "arm": name, "bin_dir": str(bin_dir), "model": model_size,
                         "max_tokens": args.max_tokens, "batches": args.batches, "device": device}, args.threads)
        for name in names
    }
    result = {"model": model_size, "max_tokens": args.max_tokens, "batches": args.batches,
              "reps": args.step_reps, "ntokens_per_batch": [s["ntokens"] for s in samples], "arms": {}}
    for name in names:
        result["arms"][name] = {**arm_timing(times[name], tokens, runners[name].model), **memory[name]}
    result["ratios"] = {f"{arm}/{reference} step": paired_ratio(times[arm], times[reference])
                        for arm, reference in STEP_TIME_RATIOS}
    for arm, reference in STEP_MEMORY_RATIOS:
        result["ratios"][f"{arm}/{reference} peak RSS"] = memory[arm]["peak_mib"] / memory[reference]["peak_mib"]
        result["ratios"][f"{arm}/{reference} extra peak"] = (
            memory[arm]["peak_extra_mib"] / memory[reference]["peak_extra_mib"])
    return result


def arm_timing(times, tokens, model):
    """One arm's step figures: median seconds, target tokens per second over all
    its steps, the times themselves and how many layers it checkpoints."""
    return {"median_step_s": statistics.median(times), "target_tokens_per_s": sum(tokens) / sum(times),
            "times": times, "checkpointed_layers": checkpointed_layers(model)}


def paired_ratio(times, reference):
    return statistics.median(t / r for t, r in zip(times, reference))


# ---------------------------------------------------- part 3: the recipes' models

# Each recipe's model as its training script sets it: architecture and model
# flags, --max-tokens per GPU, R-Drop's alpha, the size of its joined
# dictionary (fairseq-preprocess pads it to a multiple of 8: IWSLT'14's 10,000
# BPE merges give 10,152 symbols, WMT'14's --nwordssrc 32768, GPT-2's BPE for
# BART 50,264) and the source and target length of the random sentences that
# fill a batch (CNN/DailyMail: one article truncated to 1,024 tokens).
RECIPE_MODELS = {
    "iwslt14": {"arch": "transformer_iwslt_de_en", "max_tokens": 4096, "alpha": 5, "vocab": 10152,
                "lengths": (32, 32), "flags": ["--share-all-embeddings", "--dropout", "0.3"]},
    "wmt14": {"arch": "transformer_vaswani_wmt_en_de_big", "max_tokens": 4096, "alpha": 5, "vocab": 32768,
              "lengths": (32, 32),
              "flags": ["--share-all-embeddings", "--dropout", "0.1", "--attention-dropout", "0.1",
                        "--activation-dropout", "0.1"]},
    "cnn_dm": {"arch": "bart_large", "max_tokens": 1024, "alpha": 0.7, "vocab": 50264, "lengths": (1024, 96),
               "flags": ["--share-all-embeddings", "--layernorm-embedding", "--share-decoder-input-output-embed",
                         "--dropout", "0.1", "--attention-dropout", "0.1", "--clip-norm", "0.1"]},
}
RECIPE_ARMS = {
    "baseline": lambda alpha: BASELINE,
    "two-passes": lambda alpha: BASELINE,
    "ours": lambda alpha: ["--criterion", "label_smoothed_cross_entropy_rdrop", "--rdrop-alpha", str(alpha)],
    "upstream": lambda alpha: ["--criterion", "label_smoothed_cross_entropy_with_rdrop", "--rdrop-alpha", str(alpha)],
    "ours-checkpointed": lambda alpha: [*RECIPE_ARMS["ours"](alpha), "--checkpoint-activations"],
}
RECIPE_TIME_RATIOS = [("ours", "baseline"), ("two-passes", "baseline"), ("ours", "two-passes"), ("ours", "upstream"),
                      ("ours-checkpointed", "ours"), ("ours-checkpointed", "baseline")]
RECIPE_MEMORY_RATIOS = [("ours", "baseline"), ("ours", "upstream"), ("ours-checkpointed", "ours"),
                        ("ours-checkpointed", "baseline")]
# --quick on the CPU: every model with one layer each side, width 32 (the
# recipes' SMOKE=1 sizes), at 128 tokens per batch.
CPU_QUICK_SHRINK = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
                    "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
                    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
CPU_QUICK_TOKENS = 128


def recipe_dictionary(size):
    """A fairseq dictionary of ``size`` symbols (its 4 special ones included)."""
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    for index in range(size - len(dictionary)):
        dictionary.add_symbol(f"w{index}")
    return dictionary


def recipe_setup(name, device, quick):
    """(max tokens, source length, target length, extra fairseq-train flags) of a recipe's model here."""
    spec = RECIPE_MODELS[name]
    source_len, target_len = spec["lengths"]
    if quick and device == "cpu":
        return CPU_QUICK_TOKENS, min(source_len, CPU_QUICK_TOKENS), min(target_len, 16), CPU_QUICK_SHRINK
    return spec["max_tokens"], source_len, target_len, []


def build_recipe_trainer(name, arm, dictionary, device, shrink):
    """fairseq's Trainer for one arm of a recipe's model (fp16 on CUDA), its
    weights drawn from the same seed in every arm."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.tasks.translation import TranslationTask
    from fairseq.trainer import Trainer

    spec = RECIPE_MODELS[name]
    cuda = device.startswith("cuda")
    argv = [
        "unused-data-dir", "--user-dir", str(USER_DIR), "--task", "translation", "--source-lang", "src",
        "--target-lang", "tgt", "--arch", spec["arch"], *spec["flags"], "--label-smoothing", "0.1",
        *RECIPE_ARMS[arm](spec["alpha"]), "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "5e-4",
        "--max-tokens", str(spec["max_tokens"]), "--seed", "1", "--distributed-world-size", "1",
        *(["--fp16"] if cuda else ["--cpu"]), *shrink,
    ]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    # the task needs its dictionaries only: the batches are made here
    task = TranslationTask(cfg.task, dictionary, dictionary)
    torch.manual_seed(1)
    model = task.build_model(cfg.model)
    return Trainer(cfg, task, model, task.build_criterion(cfg.criterion))


def random_batches(dictionary, count, max_tokens, source_len, target_len, device):
    """``count`` translation batches of random tokens, as fairseq batches them:
    as many sentences as fit ``max_tokens`` at the longer side's length."""
    gen = torch.Generator().manual_seed(1)
    size = max(1, max_tokens // max(source_len, target_len))
    eos = dictionary.eos()
    batches = []
    for _ in range(count):
        source = torch.randint(dictionary.nspecial, len(dictionary), (size, source_len), generator=gen)
        target = torch.randint(dictionary.nspecial, len(dictionary), (size, target_len), generator=gen)
        source[:, -1] = target[:, -1] = eos
        sample = {
            "id": torch.arange(size), "nsentences": size, "ntokens": size * target_len, "target": target,
            "net_input": {"src_tokens": source, "src_lengths": torch.full((size,), source_len),
                          "prev_output_tokens": torch.cat([torch.full((size, 1), eos), target[:, :-1]], 1)},
        }
        batches.append(sample if device == "cpu" else _to_device(sample, device))
    return batches


def _to_device(sample, device):
    from fairseq import utils

    return utils.apply_to_sample(lambda t: t.to(device), sample)


def recipe_step(trainer, sample, doubles_batch):
    """One update of fairseq's Trainer. Upstream's criterion rewrites
    sample["net_input"] in place, so every step gets fresh top-level dicts."""
    if doubles_batch:
        sample = doubled(sample)
    trainer.train_step([{**sample, "net_input": dict(sample["net_input"])}])


def benchmark_recipe_model(name, args, batches, reps):
    """Part 3 for one recipe's model: every arm's step times, tokens per second and memory."""
    device = args.device
    max_tokens, source_len, target_len, shrink = recipe_setup(name, device, args.quick)
    dictionary = recipe_dictionary(RECIPE_MODELS[name]["vocab"])
    samples = random_batches(dictionary, batches, max_tokens, source_len, target_len, device)
    meter = Meter(device)
    # Memory on CUDA only: on the CPU the arms share one process's RSS, which
    # says nothing about any one of them.
    trainers, held = {}, {}
    for arm in RECIPE_ARMS:
        # what the arm holds between steps: weights, master weights, gradients, Adam's state
        before = meter.start_peak()
        trainers[arm] = build_recipe_trainer(name, arm, dictionary, device, shrink)
        recipe_step(trainers[arm], samples[0], arm == "two-passes")
        held[arm] = meter.start_peak() - before
        log(f"{name}: {arm} ready" + (f", {held[arm]:.0f} MiB held between steps" if meter.cuda else ""))
    times = {arm: [] for arm in trainers}
    extra = {arm: 0.0 for arm in trainers}
    names = list(trainers)
    for rep in range(reps + 1):  # the first round warms up and is dropped
        for index, sample in enumerate(samples):
            shift = (rep * len(samples) + index) % len(names)
            for arm in names[shift:] + names[:shift]:
                in_use = meter.start_peak()
                seconds = meter.time(lambda: recipe_step(trainers[arm], sample, arm == "two-passes"))
                extra[arm] = max(extra[arm], meter.peak() - in_use)
                if rep:
                    times[arm].append(seconds)
        log(f"{name}: round {rep + 1}/{reps + 1} done")
    tokens = [s["ntokens"] for s in samples] * reps
    result = {
        "arch": RECIPE_MODELS[name]["arch"], "vocab": len(dictionary), "max_tokens": max_tokens,
        "sentences_per_batch": samples[0]["nsentences"], "source_len": source_len, "target_len": target_len,
        "alpha": RECIPE_MODELS[name]["alpha"], "shrunk_by": shrink, "arms": {},
    }
    for arm in names:
        memory = (None, None, None) if not meter.cuda else (
            round(held[arm], 1), round(extra[arm], 1), round(held[arm] + extra[arm], 1))
        result["arms"][arm] = {**arm_timing(times[arm], tokens, trainers[arm].model),
                               **dict(zip(("held_between_steps_mib", "peak_extra_mib", "peak_mib"), memory))}
    result["ratios"] = {f"{arm}/{reference} step": paired_ratio(times[arm], times[reference])
                        for arm, reference in RECIPE_TIME_RATIOS}
    if meter.cuda:
        for arm, reference in RECIPE_MEMORY_RATIOS:
            result["ratios"][f"{arm}/{reference} peak"] = (
                result["arms"][arm]["peak_mib"] / result["arms"][reference]["peak_mib"])
    return result


def benchmark_recipes(args):
    import gc

    batches = args.batches or (2 if args.quick else 6)
    reps = args.step_reps or (2 if args.quick else 3)
    models = {}
    for name in args.recipe_models:
        models[name] = benchmark_recipe_model(name, args, batches, reps)
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {"precision": "fp16" if args.device.startswith("cuda") else "fp32", "batches": batches, "reps": reps,
            "models": models}


# ----------------------------------------------------------------- report


def kl_ratios(rows):
    by_case = {}
    for row in rows:
        by_case.setdefault((row["tokens"], row["vocab"]), {})[row["impl"]] = row
    ratios = []
    for (tokens, vocab), impls in by_case.items():
        official = impls["official"]
        for impl in ("ours", "ours+lsm"):
            ratios.append({
                "tokens": tokens, "vocab": vocab, "impl": impl,
                "time_vs_official": paired_ratio(impls[impl]["times"], official["times"]),
                "extra_memory_vs_official": impls[impl]["peak_extra_mib"] / official["peak_extra_mib"],
            })
    return ratios


def print_report(results):
    from scripts.demo_support import print_table

    memory_unit = "MiB (max_memory_allocated)" if results["device"].startswith("cuda") else "MiB (peak RSS)"
    if "kl" in results:
        print(f"\nKL term alone, forward+backward ({results['device']}, {results['threads']} thread(s)); "
              f"extra peak memory in {memory_unit}")
        print_table(
            ["N", "V", "impl", "median s", "extra peak MiB"],
            [[str(r["tokens"]), str(r["vocab"]), r["impl"], f"{r['median_s']:.3f}", f"{r['peak_extra_mib']:.0f}"]
             for r in results["kl"]],
        )
        print()
        print_table(
            ["N", "V", "impl", "time / official", "extra memory / official"],
            [[str(r["tokens"]), str(r["vocab"]), r["impl"], f"{r['time_vs_official']:.3f}",
              f"{r['extra_memory_vs_official']:.3f}"] for r in results["kl_ratios"]],
        )
    if "step" in results:
        step = results["step"]
        print(f"\nTraining step on Multi30k, {step['batches']} batches of <= {step['max_tokens']} tokens x "
              f"{step['reps']} rounds, model {step['model']}")
        print_table(
            ["arm", "median step s", "target tokens/s", f"peak {memory_unit}", "peak above start MiB"],
            [[name, f"{a['median_step_s']:.3f}", f"{a['target_tokens_per_s']:.0f}", f"{a['peak_mib']:.0f}",
              f"{a['peak_extra_mib']:.0f}"] for name, a in step["arms"].items()],
        )
        print()
        print_table(["ratio", "value"], [[k, f"{v:.3f}"] for k, v in step["ratios"].items()])
    if "recipes" in results:
        recipes = results["recipes"]
        for name, model in recipes["models"].items():
            shrunk = " (shrunk: " + " ".join(model["shrunk_by"]) + ")" if model["shrunk_by"] else ""
            print(f"\nRecipes' models: {name}, {model['arch']}{shrunk}, {recipes['precision']}, vocabulary "
                  f"{model['vocab']}, {model['sentences_per_batch']} x {model['source_len']}/{model['target_len']} "
                  f"tokens per batch (--max-tokens {model['max_tokens']}), {recipes['batches']} batches x "
                  f"{recipes['reps']} rounds")
            def mib(value):
                return "-" if value is None else f"{value:.0f}"

            print_table(
                ["arm", "median step s", "target tokens/s", "peak MiB (max_memory_allocated)",
                 "held between steps MiB"],
                [[arm, f"{a['median_step_s']:.3f}", f"{a['target_tokens_per_s']:.0f}", mib(a["peak_mib"]),
                  mib(a["held_between_steps_mib"])] for arm, a in model["arms"].items()],
            )
            print()
            print_table(["ratio", "value"], [[k, f"{v:.3f}"] for k, v in model["ratios"].items()])


def log(message):
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


def kl_size(text):
    """``NxV`` on the command line: N tokens per pass, vocabulary V."""
    tokens, _, vocab = text.partition("x")
    if not (tokens.isdigit() and vocab.isdigit()):
        raise argparse.ArgumentTypeError(f"expected TOKENSxVOCAB such as 1024x250000, got {text!r}")
    return int(tokens), int(vocab)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (intra-op) for every case")
    parser.add_argument("--parts", nargs="+", choices=["kl", "step", "recipes"],
                        help="default: kl step on the CPU, kl recipes on CUDA")
    parser.add_argument("--recipe-models", nargs="+", choices=list(RECIPE_MODELS), default=list(RECIPE_MODELS),
                        help="the recipes' models of --parts recipes (default: all)")
    parser.add_argument("--kl-reps", type=int, default=5, help="timed repetitions per KL case")
    parser.add_argument("--kl-sizes", nargs="+", type=kl_size,
                        help="only these KL cases, as TOKENSxVOCAB (e.g. 1024x250000); default: the full table")
    parser.add_argument("--batches", type=int,
                        help="batches per round of the step benchmarks (default 6; recipes --quick 2)")
    parser.add_argument("--step-reps", type=int,
                        help="timed rounds over the batches, after one warm-up (default 3; recipes --quick 2)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="tokens per batch in the step benchmark")
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that everything runs")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "benchmark")
    parser.add_argument("--out", type=Path, help="JSON output (default: WORKDIR/benchmark-DEVICE.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.parts = args.parts or (["kl", "recipes"] if args.device.startswith("cuda") else ["kl", "step"])

    if args.child:
        spec = json.loads(args.child)
        if spec["part"] == "kl":
            result = kl_case(spec["impl"], spec["tokens"], spec["vocab"], spec["device"], spec["reps"])
        else:
            result = step_memory_case(spec["arm"], spec["bin_dir"], spec["model"], spec["max_tokens"],
                                      spec["batches"], spec["device"])
        print(json.dumps(result))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {"device": args.device, "threads": args.threads, "torch": torch.__version__,
               "cpu_count": os.cpu_count(), "quick": args.quick}
    if "kl" in args.parts:
        results["kl"] = benchmark_kl(args)
        results["kl_ratios"] = kl_ratios(results["kl"])
    if "step" in args.parts:
        results["step"] = benchmark_step(argparse.Namespace(
            **{**vars(args), "batches": args.batches or 6, "step_reps": args.step_reps or 3}))
    if "recipes" in args.parts:
        results["recipes"] = benchmark_recipes(args)
    out = args.out or args.workdir / f"benchmark-{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_report(results)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
