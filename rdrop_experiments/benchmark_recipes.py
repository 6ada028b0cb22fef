"""The benchmark's part 3: the recipes' own models at their per-GPU batch in fairseq's Trainer, arms taking turns."""

import gc

import torch

from rdrop_experiments.benchmark_measure import Meter, arm_timing, paired_ratio
from rdrop_experiments.benchmark_step import BASELINE, doubled
from rdrop_experiments.console import log
from rdrop_experiments.fairseq_tools import USER_DIR

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
    """Part 3 for every model of ``--recipe-models``, one after another; sizes
    from the command line's ``args`` (``--batches``, ``--step-reps``, ``--quick``)."""
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
