"""fairseq checkpoints under torch's ``weights_only`` loading.

torch >= 2.6 loads with ``weights_only=True`` by default: its unpickler builds
tensors, plain containers and the classes and functions on an allow-list, and
calls nothing else, so a file cannot run code. fairseq's checkpoints also hold
an ``argparse.Namespace`` (the legacy args) and numpy arrays and scalars (in
the trainer's saved state), which torch's list lacks, so fairseq-generate,
fairseq-eval-lm, fairseq-validate and ``--restore-file`` would fail on every
checkpoint fairseq writes.

:func:`allow_fairseq_checkpoint_types` lets fairseq's loader, and nothing else,
accept those types: it wraps ``fairseq.checkpoint_utils.load_checkpoint_to_cpu``
(through which all of the above load) so that they are allow-listed for the
duration of that call only; every other ``torch.load`` in the process keeps
torch's own list. The types are data holders: unpickling them sets a
namespace's attributes, allocates a numpy array of a given shape and dtype and
fills it with the stored bytes, or makes a numpy scalar from its bytes, and
none of them calls a function named by the file.
"""

import argparse
import functools

import numpy as np
import torch
from fairseq import checkpoint_utils


def fairseq_checkpoint_types():
    """``argparse.Namespace``, numpy's array, dtype and (non-object) dtype
    classes, and the two functions numpy arrays and scalars unpickle through."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    return [argparse.Namespace, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtype_classes]


def allow_fairseq_checkpoint_types() -> None:
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:
        return  # torch < 2.5, whose torch.load unpickles everything by default
    load = checkpoint_utils.load_checkpoint_to_cpu

    @functools.wraps(load)
    def load_checkpoint_to_cpu(*args, **kwargs):
        with safe_globals(fairseq_checkpoint_types()):
            return load(*args, **kwargs)

    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
