"""The benchmark: what R-Drop costs here in time and memory, against the official formula, the baseline and upstream.

The KL term against the official formula, a full training step against the
baseline and upstream fairseq's R-Drop, and the recipes' own models.

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

The console shows the benchmark's progress and its tables only: fairseq's and
hydra's logging, Python's warnings (torch's among them) and the whole output of
every process a case runs in go to a log in --workdir, named after the JSON
(``benchmark-cpu.log`` beside ``benchmark-cpu.json`` by default), which the
first line names.
"""

import argparse
import json
import logging
import os
from pathlib import Path

import torch

from rdrop_experiments import console
from rdrop_experiments.benchmark_kl import benchmark_kl, kl_case, kl_ratios, kl_size
from rdrop_experiments.benchmark_recipes import RECIPE_MODELS, benchmark_recipes
from rdrop_experiments.benchmark_step import benchmark_step, step_memory_case
from rdrop_experiments.console import log, print_table
from rdrop_experiments.demo import as_program
from rdrop_experiments.fairseq_tools import REPO


def print_report(results):
    """The tables of the parts measured, and their ratios."""
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
              "n/a" if r["extra_memory_vs_official"] is None else f"{r['extra_memory_vs_official']:.3f}"]
             for r in results["kl_ratios"]],
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


def send_library_output_to(log_path):
    """From now on logging (fairseq's, hydra's) and Python's warnings (torch's
    among them) go to ``log_path``, emptied first, instead of the console.
    Opened for appending, so that the cases' processes can append there too."""
    log_path.write_text("")
    handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s"))
    logging.basicConfig(handlers=[handler], level=logging.INFO, force=True)
    logging.captureWarnings(True)


def parse_command_line(argv=None):
    """The command line's arguments, ``--parts`` defaulting to the device's."""
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
    # one case in a process of its own: its spec, and the file its result goes to
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = args.parts or (["kl", "recipes"] if args.device.startswith("cuda") else ["kl", "step"])
    return args


def run_case(spec, result_path):
    """Measures one case of ``run_child`` and writes its result as JSON to ``result_path``."""
    if spec["part"] == "kl":
        result = kl_case(spec["impl"], spec["tokens"], spec["vocab"], spec["device"], spec["reps"])
    else:
        result = step_memory_case(spec["arm"], spec["bin_dir"], spec["model"], spec["max_tokens"],
                                  spec["batches"], spec["device"])
    result_path.write_text(json.dumps(result))


def run(args):
    """Measures the parts the command line asks for, writes the JSON and prints the tables."""
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = args.out or args.workdir / f"benchmark-{args.device.split(':')[0]}.json"
    log_path = args.workdir / f"{out.stem}.log"
    send_library_output_to(log_path)
    log(f"fairseq's, hydra's and torch's messages, and each case's process output, go to {log_path}")
    results = {"device": args.device, "threads": args.threads, "torch": torch.__version__,
               "cpu_count": os.cpu_count(), "quick": args.quick}
    if "kl" in args.parts:
        results["kl"] = benchmark_kl(args, log_path)
        results["kl_ratios"] = kl_ratios(results["kl"])
    if "step" in args.parts:
        results["step"] = benchmark_step(args, log_path)
    if "recipes" in args.parts:
        results["recipes"] = benchmark_recipes(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_report(results)
    log(f"wrote {out}")


def main(argv=None):
    """The benchmark's command line (the module's doc); with ``--child``, one case in this process."""
    console.set_prefix("benchmark")
    args = parse_command_line(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        run_case(json.loads(args.child), args.child_result)
    else:
        as_program(lambda: run(args))
