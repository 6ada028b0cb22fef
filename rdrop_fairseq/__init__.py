"""R-Drop for fairseq: pass this folder to ``--user-dir`` to register the criteria.

The loss functions in :mod:`rdrop_fairseq.loss` need only PyTorch; the fairseq
criteria are registered when fairseq is importable.
"""

import argparse
import importlib.util

import numpy as np
import torch

__version__ = "0.1.0"


def _fairseq_checkpoint_globals():
    """The non-tensor types in fairseq checkpoints: the argparse.Namespace of the
    legacy args and numpy arrays and scalars in the trainer's saved state."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    return [argparse.Namespace, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtype_classes]


# torch>=2.6 loads with weights_only=True, which rejects those types unless they
# are allow-listed. Doing it on import makes fairseq-generate, fairseq-eval-lm
# and --restore-file work with --user-dir and no environment variable.
torch.serialization.add_safe_globals(_fairseq_checkpoint_globals())

if importlib.util.find_spec("fairseq") is not None:
    from rdrop_fairseq import criterions  # noqa: F401  (registers the criteria)
