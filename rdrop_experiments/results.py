"""A demo's results: ``results.json``, and every run's curves drawn as ``curves.png``.

    python scripts/fairseq_logs.py plot --out curves.png baseline=runs/a/train.log rdrop=runs/b/train.log
    python scripts/fairseq_logs.py plot --out curves.png runs/multi30k-demo/results.json
"""

import argparse
import json
from pathlib import Path

from rdrop_experiments.fairseq_logs import curves
from rdrop_experiments.fairseq_tools import REPO


def write_results(results, work, title):
    """``results.json`` and ``curves.png`` (every run's training and validation curves) in ``work``."""
    (work / "results.json").write_text(json.dumps(results, indent=2))
    runs = results["runs"]
    plot({f"{name} seed {s['seed']}": curves(s["log"]) for name, arm in runs.items() for s in arm["seeds"]},
         work / "curves.png", title=title)


def runs_of_results(results_path):
    """{"<run> seed <seed>": curves} for every training log a demo's results.json
    lists (``runs.<name>.seeds[].log``); relative log paths are taken from the
    current directory, else from the repository root the demos run in."""
    results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    runs = {}
    for name, arm in results["runs"].items():
        for seed in arm["seeds"]:
            log = Path(seed["log"])
            if not log.is_absolute() and not log.exists():
                log = REPO / log
            if not log.is_file():
                raise FileNotFoundError(f"{results_path} lists the training log {seed['log']}, which does not exist")
            runs[f"{name} seed {seed['seed']}"] = curves(log)
    return runs


def plot(runs, out_path, title=None):
    """One figure: training CE and KL, validation loss, validation BLEU against updates.

    ``runs`` maps a label to the curves of :func:`curves`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("train", "loss", "training loss per pass (bits/token)"),
        ("train", "kl_loss", "training symmetric KL (bits/token)"),
        ("valid", "loss", "validation loss (bits/token)"),
        ("valid", "bleu", "validation BLEU"),
    ]
    panels = [p for p in panels if any(_present(c[p[0]][p[1]]) for c in runs.values())]
    # One colour per arm ("<arm> seed <n>" labels) and one line style per seed of
    # the arm, the same in every panel, so several seeds of several arms stay readable.
    arms = list(dict.fromkeys(name.split(" seed ")[0] for name in runs))
    seen = {arm: 0 for arm in arms}
    styles = {}
    for name in runs:
        arm = name.split(" seed ")[0]
        styles[name] = dict(color=f"C{arms.index(arm)}", linestyle=["-", "--", ":", "-."][seen[arm] % 4])
        seen[arm] += 1
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (split, key, label) in zip(axes[0], panels):
        for name, run in runs.items():
            xs, ys = run[split]["updates"], run[split][key]
            points = [(x, y) for x, y in zip(xs, ys) if isinstance(y, float)]
            if points:
                # Markers where points are few.
                marker = "o" if len(points) <= 30 else None
                ax.plot(*zip(*points), marker=marker, ms=3, label=name, **styles[name])
        ax.set_xlabel("updates")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def _present(values):
    return any(isinstance(v, float) for v in values)


def main(argv=None):
    """``scripts/fairseq_logs.py plot``: a PNG of the curves of fairseq logs or of a demo's results.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    plot_cmd = sub.add_parser("plot", help="PNG of the curves of one or more runs")
    plot_cmd.add_argument(
        "runs", nargs="+", metavar="LABEL=LOG|RESULTS.json",
        help="a label and a fairseq json log file, or a demo's results.json (all its runs)",
    )
    plot_cmd.add_argument("--out", required=True, help="PNG file to write")
    plot_cmd.add_argument("--title")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        if spec.endswith(".json") and "=" not in spec:
            try:
                runs.update(runs_of_results(spec))
            except (OSError, ValueError, KeyError) as error:
                parser.error(f"cannot read the runs of {spec}: {error!r}")
            continue
        label, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"expected LABEL=LOG with an existing log file, or a results.json, got {spec!r}")
        runs[label] = curves(path)
    plot(runs, args.out, args.title)
    print(f"wrote {args.out}")

