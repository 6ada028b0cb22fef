"""R-Drop for fairseq: pass this folder to ``--user-dir`` to register the criteria.

The loss functions in :mod:`rdrop_fairseq.loss` need only PyTorch; the fairseq
criteria are registered when fairseq is importable.
"""

import argparse
import importlib.util

import torch

__version__ = "0.1.0"

# fairseq checkpoints carry an argparse.Namespace; torch>=2.6 loads with
# weights_only=True and rejects it unless it is allow-listed. Doing it here
# makes fairseq-generate, fairseq-eval-lm and --restore-file work with
# --user-dir and no environment variable.
torch.serialization.add_safe_globals([argparse.Namespace])

if importlib.util.find_spec("fairseq") is not None:
    from rdrop_fairseq import criterions  # noqa: F401  (registers the criteria)
