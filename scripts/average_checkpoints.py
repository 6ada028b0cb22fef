#!/usr/bin/env python3
"""Average the parameters of the last N fairseq checkpoints.

The pip package of fairseq does not ship fairseq's ``scripts/average_checkpoints.py``;
this is a small equivalent with the same options. Checkpoints are selected from
a save directory by update number (``checkpoint_<epoch>_<update>.pt``, written
with ``--save-interval-updates``) or by epoch (``checkpoint<epoch>.pt``), or
given explicitly. The output keeps everything but the model weights (config,
task state, ...) from the newest input, so fairseq-generate loads it as usual.

    python scripts/average_checkpoints.py --inputs CKPT_DIR --num-update-checkpoints 10 --output avg.pt
    python scripts/average_checkpoints.py --inputs a.pt b.pt --output avg.pt
"""

import argparse
import re
import sys
from collections import OrderedDict
from pathlib import Path
from typing import List

import torch

from rdrop_experiments.errors import BadInput, run_script
from rdrop_fairseq.checkpoint_types import RefusedCheckpointError, load_checkpoint_safely

_UPDATE = re.compile(r"^checkpoint_\d+_(\d+)\.pt$")
_EPOCH = re.compile(r"^checkpoint(\d+)\.pt$")


def last_checkpoints(folder: Path, n: int, by: str) -> List[Path]:
    pattern = _UPDATE if by == "update" else _EPOCH
    found = []
    for path in folder.iterdir():
        m = pattern.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
    if len(found) < n:
        raise BadInput(f"error: asked for the last {n} {by} checkpoints but {folder} has "
                         f"{len(found)} ({pattern.pattern})")
    return [p for _, p in sorted(found)[-n:]]


def _load(path: Path) -> dict:
    # On every torch: tensors, plain containers and what fairseq's checkpoints
    # hold (the legacy args, numpy arrays and scalars), nothing that runs code.
    # The file's config stays a plain dict, so the output loads the same way.
    try:
        return load_checkpoint_safely(path)
    except RefusedCheckpointError as error:
        raise BadInput(f"error: {path} holds more than fairseq's checkpoints do ({error.reason}), so it is not "
                         "loaded: unpickling it could run code. Average checkpoints that fairseq-train wrote")


def average(paths: List[Path]) -> dict:
    """State of the last checkpoint with ``model`` replaced by the mean."""
    sums, dtypes, state = None, {}, None
    for path in paths:
        state = _load(path)
        model = state["model"]
        if sums is None:
            sums = OrderedDict((k, v.detach().to(torch.float64).clone()) for k, v in model.items())
            dtypes = {k: v.dtype for k, v in model.items()}
        else:
            if model.keys() != sums.keys():
                raise BadInput(f"error: {path} has different parameters from {paths[0]}")
            for k, v in model.items():
                sums[k] += v.detach().to(torch.float64)
    n = len(paths)
    # accumulate in float64 and cast back, so fp16 checkpoints average exactly
    state["model"] = OrderedDict(
        (k, (v / n).to(dtypes[k]) if dtypes[k].is_floating_point else (v / n).round().to(dtypes[k]))
        for k, v in sums.items()
    )
    return state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", nargs="+", required=True, type=Path,
                   help="checkpoint files, or one save directory with --num-*-checkpoints")
    p.add_argument("--output", required=True, type=Path)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--num-update-checkpoints", type=int, help="average the last N checkpoint_E_U.pt")
    g.add_argument("--num-epoch-checkpoints", type=int, help="average the last N checkpointE.pt")
    args = p.parse_args(argv)

    n = args.num_update_checkpoints or args.num_epoch_checkpoints
    if n:
        if len(args.inputs) != 1 or not args.inputs[0].is_dir():
            p.error("--num-*-checkpoints needs exactly one existing directory as --inputs")
        paths = last_checkpoints(args.inputs[0], n,
                                 "update" if args.num_update_checkpoints else "epoch")
    else:
        paths = args.inputs
        missing = [str(x) for x in paths if not x.is_file()]
        if missing:
            raise BadInput("error: checkpoint(s) not found: " + ", ".join(missing))
    print("averaging:\n  " + "\n  ".join(map(str, paths)), file=sys.stderr)
    torch.save(average(paths), args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
