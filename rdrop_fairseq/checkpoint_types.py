"""fairseq checkpoints under torch's ``weights_only`` loading, on torch 2.0 to 2.13.

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
sets an object's attributes, allocates a numpy array of a numeric dtype and
fills it with the stored bytes, or makes a numpy scalar from its bytes, and
none of them calls a function named by the file. On torch < 2.6, whose
``torch.load`` unpickles anything by default, fairseq's loaders are left as
they are.

:func:`load_checkpoint_safely` is how this project's own scripts load a
checkpoint: on every torch it accepts torch's weights-only types and fairseq's
checkpoint types, and refuses anything else with :class:`RefusedCheckpointError`.
"""

import argparse
import codecs
import collections
import contextlib
import functools
import pickle
import threading
import typing

import numpy as np
import omegaconf
import torch
import torch._weights_only_unpickler
from fairseq import checkpoint_utils, trainer
from fairseq.distributed import utils as distributed_utils

# torch >= 2.6 loads with weights_only=True by default, and its allow-list takes
# (object, "module.name") entries, which fairseq_checkpoint_types needs. torch
# 2.4 and 2.5 name every entry by its own __module__ and __name__, and earlier
# torch has no allow-list beside its built-in one.
WEIGHTS_ONLY_BY_DEFAULT = torch.__version__ >= (2, 6)

# The kinds of numpy dtype a checkpoint may hold: boolean, signed and unsigned
# integer, floating, complex.
NUMERIC_KINDS = "biufc"


class RefusedCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds more than fairseq's checkpoints do; ``reason`` says what
    was refused, ``path`` which file (``None`` while unpickling)."""

    def __init__(self, reason, path=None):
        super().__init__(reason if path is None else f"{path}: {reason}")
        self.reason = reason
        self.path = path


def numeric_dtype(spec, align=False, copy=False):
    """``numpy.dtype`` as a checkpoint may call it: for the numeric kinds only.

    It returns numpy's own instance of the dtype, never a copy: unpickling then
    sets the dtype's state from the file, which numpy applies to a copy (its
    fields, flags and byte order, so a copy checked here as float64 could end
    structured, or flagged as holding objects) and ignores for its own
    instances. Numeric data is therefore read in this machine's byte order.
    """
    dtype = np.dtype(spec)
    if dtype.kind not in NUMERIC_KINDS or not dtype.isbuiltin:
        raise RefusedCheckpointError(
            f"numpy dtype {dtype}: only boolean, integer, floating and complex dtypes in this machine's byte order load"
        )
    return dtype


def fairseq_checkpoint_types():
    """``argparse.Namespace``, numpy's array class, :func:`numeric_dtype` as
    ``numpy.dtype``, the dtype classes of the numeric dtypes (boolean, integer,
    floating, complex), and the two functions numpy arrays and scalars unpickle
    through, under the module names numpy 2 (``numpy._core``) and numpy 1
    (``numpy.core``) pickles give them."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    numpy_functions = [
        (function, f"{module}.{function.__name__}")
        for function in (multiarray._reconstruct, multiarray.scalar)
        for module in ("numpy._core.multiarray", "numpy.core.multiarray")
    ]
    return [argparse.Namespace, np.ndarray, (numeric_dtype, "numpy.dtype"), *numpy_functions, *dtype_classes]


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
        # named here: torch names an entry by its __name__ or __qualname__,
        # which Python 3.9's typing.Any lacks
        (typing.Any, "typing.Any"),
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
    """Adds ``entries`` to torch's weights-only allow-list for the block (torch >= 2.6).

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
            done = [entry for entry in set(mine) if _window_entries[entry] <= 0]
            for entry in done:
                del _window_entries[entry]
            if done:
                _remove_from_allow_list(done)


def _remove_from_allow_list(entries):
    # torch's unpickler reads the list without our lock, so it must never see
    # it emptied, as clear_safe_globals() followed by add_safe_globals(kept)
    # would show it. add_safe_globals rebinds the list to its union with the
    # entries, and safe_globals(entries) on exit to its difference with them,
    # each in one step.
    torch.serialization.safe_globals(entries).__exit__(None, None, None)


def _allowing(function, types):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with allowed_while(types()):
            return function(*args, **kwargs)

    wrapper.allows_fairseq_checkpoint_types = True
    return wrapper


def allow_fairseq_checkpoint_types() -> None:
    """Lets fairseq's checkpoint loaders accept fairseq's checkpoint types on
    torch >= 2.6; on earlier torch it does nothing, as there ``torch.load``
    unpickles anything by default. Applying it again changes nothing."""
    if not WEIGHTS_ONLY_BY_DEFAULT:
        return
    if getattr(checkpoint_utils.load_checkpoint_to_cpu, "allows_fairseq_checkpoint_types", False):
        return
    checkpoint_utils.load_checkpoint_to_cpu = _allowing(
        checkpoint_utils.load_checkpoint_to_cpu, fairseq_checkpoint_types
    )
    checkpoint_utils.load_ema_from_checkpoint = _allowing(
        checkpoint_utils.load_ema_from_checkpoint, fairseq_checkpoint_types
    )
    trainer.Trainer.load_checkpoint = _allowing(
        trainer.Trainer.load_checkpoint, lambda: fairseq_checkpoint_types() + broadcast_types()
    )


def load_checkpoint_safely(path):
    """A fairseq checkpoint, loaded to the CPU without running code it names, on every torch.

    It accepts tensors, plain containers and fairseq's checkpoint types, and
    raises :class:`RefusedCheckpointError` for a file that holds anything else.
    The config stays the plain dict fairseq saves.
    """
    if WEIGHTS_ONLY_BY_DEFAULT:
        try:
            with allowed_while(fairseq_checkpoint_types()):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            # torch re-raises its unpickler's error with advice around it; the
            # original, the context, says what was refused.
            refusal = error.__context__ if isinstance(error.__context__, pickle.UnpicklingError) else error
            raise RefusedCheckpointError(_reason(refusal), path) from error
    # Earlier torch unpickles anything unless told otherwise, and its
    # weights-only list takes no (object, name) entries (none at all before
    # 2.4): unpickle with an unpickler that refuses what is not on ours.
    try:
        return torch.load(path, map_location="cpu", pickle_module=_RestrictedPickle)
    except RefusedCheckpointError as error:
        raise RefusedCheckpointError(error.reason, path) from None


def _reason(refusal):
    if isinstance(refusal, RefusedCheckpointError):
        return refusal.reason
    # what torch refused, without its advice to allow-list it
    return str(refusal).split(". Please")[0].strip().rstrip(".")


@functools.lru_cache(maxsize=None)
def _restricted_allow_list():
    """What :class:`_RestrictedUnpickler` resolves, by the name a pickle gives:
    torch's own weights-only list, ``_codecs.encode`` (protocol 2 pickles bytes,
    numpy's among them, as a call of it; torch >= 2.5 lists it too), and
    fairseq's checkpoint types."""
    allowed = dict(torch._weights_only_unpickler._get_allowed_globals())
    allowed["_codecs.encode"] = codecs.encode
    for entry in fairseq_checkpoint_types():
        value, name = entry if isinstance(entry, tuple) else (entry, f"{entry.__module__}.{entry.__qualname__}")
        allowed[name] = value
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """pickle's unpickler, resolving only the globals on :func:`_restricted_allow_list`."""

    def find_class(self, module, name):
        # torch.load subclasses this class and calls this method through
        # super() for every global but its storage types, which it makes itself.
        value = _restricted_allow_list().get(f"{module}.{name}")
        if value is None:
            raise RefusedCheckpointError(f"{module}.{name} is not on the list of what fairseq's checkpoints hold")
        return value


class _RestrictedPickle:
    """What ``torch.load(pickle_module=...)`` uses of a pickle module: its
    ``Unpickler``, and ``load`` for the legacy format's headers."""

    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()
