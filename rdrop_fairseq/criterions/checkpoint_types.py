"""fairseq checkpoints under torch's ``weights_only`` loading.

torch >= 2.6 loads with ``weights_only=True`` by default: its unpickler builds
tensors, plain containers and the classes and functions on an allow-list, and
calls nothing else, so a file cannot run code. fairseq's checkpoints also hold
an ``argparse.Namespace`` (the legacy args) and numpy arrays and scalars (in
the trainer's saved state), which torch's list lacks, so fairseq-generate,
fairseq-eval-lm, fairseq-validate and ``--restore-file`` would fail on every
checkpoint fairseq writes. On several GPUs, rank 0 reads the checkpoint and
sends it to the other ranks through ``fairseq.distributed.utils.broadcast_object``,
which pickles the loaded state, by then also holding fairseq's tensor
placeholders and the config as omegaconf objects, and unpickles it on each
rank with a plain ``torch.load``.

:func:`allow_fairseq_checkpoint_types` lets fairseq's loaders, and nothing
else, accept those types, for the duration of their call only:
``checkpoint_utils.load_checkpoint_to_cpu`` (behind generation, evaluation,
validation and ``from_pretrained``) and ``load_ema_from_checkpoint`` accept
:func:`fairseq_checkpoint_types`; ``Trainer.load_checkpoint`` (resuming,
``--restore-file``, ``--finetune-from-model``, on every rank) accepts those
and :func:`broadcast_types`. Every other ``torch.load`` in the process keeps
torch's own list, and entries that were on the list before (a user's own
``add_safe_globals``) stay there. The types are data holders: unpickling them
sets an object's attributes, allocates a numpy array of a given shape and dtype
and fills it with the stored bytes, or makes a numpy scalar from its bytes, and
none of them calls a function named by the file.
"""

import argparse
import collections
import contextlib
import functools
import threading
import typing

import numpy as np
import omegaconf
import torch
from fairseq import checkpoint_utils, trainer
from fairseq.distributed import utils as distributed_utils


def fairseq_checkpoint_types():
    """``argparse.Namespace``, numpy's array, dtype and numeric dtype classes
    (boolean, integer, floating, complex), and the two functions numpy arrays and
    scalars unpickle through, under the module names numpy 2 (``numpy._core``)
    and numpy 1 (``numpy.core``) pickles give them."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    numpy_functions = [
        (function, f"{module}.{function.__name__}")
        for function in (multiarray._reconstruct, multiarray.scalar)
        for module in ("numpy._core.multiarray", "numpy.core.multiarray")
    ]
    return [argparse.Namespace, np.ndarray, np.dtype, *numpy_functions, *dtype_classes]


def broadcast_types():
    """What the state fairseq broadcasts from rank 0 adds: the placeholders that
    stand for its tensors, and the config that ``load_checkpoint_to_cpu`` turns
    into an omegaconf ``DictConfig`` (its nodes, their metadata, and the types
    that metadata names)."""
    return [
        distributed_utils._TensorPlaceholder,
        omegaconf.DictConfig,
        omegaconf.ListConfig,
        omegaconf.AnyNode,
        omegaconf.base.Metadata,
        omegaconf.base.ContainerMetadata,
        typing.Any,
        dict,
        list,
        int,
        collections.defaultdict,
    ]


_lock = threading.Lock()
# Entries on torch's allow-list only because an open window put them there,
# with the number of open windows that need each.
_window_entries: collections.Counter = collections.Counter()


@contextlib.contextmanager
def allowed_while(entries):
    """Adds ``entries`` to torch's weights-only allow-list for the block.

    Unlike ``torch.serialization.safe_globals``, it removes on exit only what it
    added, and only once no other open block (in another thread) needs it.
    """
    with _lock:
        present = set(torch.serialization.get_safe_globals())
        mine = [entry for entry in entries if entry in _window_entries or entry not in present]
        _window_entries.update(mine)
        torch.serialization.add_safe_globals(mine)
    try:
        yield
    finally:
        with _lock:
            _window_entries.subtract(mine)
            done = {entry for entry in mine if _window_entries[entry] <= 0}
            for entry in done:
                del _window_entries[entry]
            if done:
                kept = [entry for entry in torch.serialization.get_safe_globals() if entry not in done]
                torch.serialization.clear_safe_globals()
                torch.serialization.add_safe_globals(kept)


def _allowing(function, types):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with allowed_while(types()):
            return function(*args, **kwargs)

    return wrapper


def allow_fairseq_checkpoint_types() -> None:
    if getattr(torch.serialization, "safe_globals", None) is None:
        return  # torch < 2.5, whose torch.load unpickles everything by default
    checkpoint_utils.load_checkpoint_to_cpu = _allowing(
        checkpoint_utils.load_checkpoint_to_cpu, fairseq_checkpoint_types
    )
    checkpoint_utils.load_ema_from_checkpoint = _allowing(
        checkpoint_utils.load_ema_from_checkpoint, fairseq_checkpoint_types
    )
    trainer.Trainer.load_checkpoint = _allowing(
        trainer.Trainer.load_checkpoint, lambda: fairseq_checkpoint_types() + broadcast_types()
    )
