"""The benchmark's part 2: one training step on real Multi30k batches, every arm with the same weights, taking turns."""

import copy
import importlib.util
import sys
from pathlib import Path

import torch

from rdrop_experiments.benchmark_measure import Meter, arm_timing, paired_ratio, run_child
from rdrop_experiments.console import log
from rdrop_experiments.fairseq_tools import REPO, USER_DIR

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
# --quick: one layer each side, width 64, on 2,000 pairs with sentencepiece 1000
QUICK_MODEL = dict(MODEL, layers=1, embed_dim=64, ffn_dim=128, vocab_size=1000)
QUICK_TRAIN_PAIRS = 2000
MULTI30K_DEMO = REPO / "examples" / "translation" / "demo_multi30k.py"


def multi30k_demo():
    """The translation demo (its Demo subclass), loaded from its file."""
    name = "demo_multi30k"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, MULTI30K_DEMO)
        module = importlib.util.module_from_spec(spec)
        # registered first, as an import does: the data folder's name hashes the module's code
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].Multi30k()


def prepare_multi30k(work, vocab_size, train_pairs=None):
    """The translation demo's sentencepiece and binarization of Multi30k (all of
    its training pairs by default) in ``work``, reused when prepared already."""
    from rdrop_experiments.demo import prepared_data

    demo = multi30k_demo()
    return prepared_data(demo, work, {**demo.setup, "vocab_size": vocab_size, "train_subset": train_pairs}, {})


def build_arm(bin_dir, arm, model_size, device):
    """(task, model, criterion) of one arm, its weights drawn from seed 1."""
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
    """The first ``count`` training batches of up to ``max_tokens`` tokens, shuffled with seed 1."""
    from fairseq import utils

    itr = task.get_batch_iterator(
        dataset=task.dataset("train"), max_tokens=max_tokens, max_positions=(1024, 1024),
        seed=1, required_batch_size_multiple=8,
    ).next_epoch_itr(shuffle=True)
    return [utils.move_to_cuda(next(itr), device) if device.startswith("cuda") else next(itr) for _ in range(count)]


class StepArm:
    """One arm's training step: criterion, backward and an Adam update."""

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


def step_memory_case(arm, bin_dir, model_size, max_tokens, batches, device):
    """One arm's peak memory over ``batches`` steps (run in a process of its own, :func:`run_child`)."""
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


def benchmark_step(args, log_path):
    """Every arm's step times on the same batches, taking turns in rotating
    order, and each arm's peak memory from a fresh process whose output goes to
    ``log_path``; the command line's ``args`` give the sizes (``--batches``,
    default 6, ``--step-reps``, default 3, ``--max-tokens``, ``--quick``)."""
    batches, reps = args.batches or 6, args.step_reps or 3
    model_size = QUICK_MODEL if args.quick else MODEL
    bin_dir = prepare_multi30k(args.workdir, model_size["vocab_size"], QUICK_TRAIN_PAIRS if args.quick else None)
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
    samples = real_batches(arms["baseline"][0], args.max_tokens, batches, device)
    meter = Meter(device)
    names = list(runners)
    times = {name: [] for name in names}
    for rep in range(reps + 1):  # the first round warms up and is dropped
        for index, sample in enumerate(samples):
            shift = (rep * len(samples) + index) % len(names)
            for name in names[shift:] + names[:shift]:
                seconds = meter.time(lambda: runners[name].step(sample))
                if rep:
                    times[name].append(seconds)
        log(f"step round {rep + 1}/{reps + 1} done")
    tokens = [s["ntokens"] for s in samples] * reps
    memory = {}
    for name in names:
        memory[name] = run_child({"part": "step-memory", "arm": name, "bin_dir": str(bin_dir), "model": model_size,
                                  "max_tokens": args.max_tokens, "batches": batches, "device": device},
                                 args.threads, log_path)
        log(f"step {name}: peak {memory[name]['peak_mib']:.0f} MiB")
    result = {"model": model_size, "max_tokens": args.max_tokens, "batches": batches,
              "reps": reps, "ntokens_per_batch": [s["ntokens"] for s in samples], "arms": {}}
    for name in names:
        result["arms"][name] = {**arm_timing(times[name], tokens, runners[name].model), **memory[name]}
    result["ratios"] = {f"{arm}/{reference} step": paired_ratio(times[arm], times[reference])
                        for arm, reference in STEP_TIME_RATIOS}
    for arm, reference in STEP_MEMORY_RATIOS:
        result["ratios"][f"{arm}/{reference} peak RSS"] = memory[arm]["peak_mib"] / memory[reference]["peak_mib"]
        result["ratios"][f"{arm}/{reference} extra peak"] = (
            memory[arm]["peak_extra_mib"] / memory[reference]["peak_extra_mib"])
    return result
