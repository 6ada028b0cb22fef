"""fairseq's checkpoint loaders accept fairseq's checkpoint types under torch's
``weights_only`` loading, for the duration of their call only, and leave
everything else on torch's allow-list as it was: a user's own entries, and
the entries of a load still running in another thread. Our own scripts load
checkpoints with :func:`load_checkpoint_safely`, which refuses on every torch
what could run code."""

import argparse
import fractions
import io
import os
import pickle
import subprocess
import sys
import threading
import typing

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils

import rdrop_fairseq  # noqa: F401  (wraps fairseq's loaders)
from rdrop_fairseq import checkpoint_types
from rdrop_fairseq.checkpoint_types import allowed_while, broadcast_types, fairseq_checkpoint_types

from .helpers.fairseq_runs import COMMON_TRAIN, REPO, WIKITEXT2, head_lines, run_tool, write_lines

needs_weights_only_default = pytest.mark.skipif(
    not checkpoint_types.WEIGHTS_ONLY_BY_DEFAULT,
    reason=f"torch {torch.__version__} < 2.6 loads with weights_only=False by default, so fairseq's loaders "
    "are left as they are, and its allow-list (if any) takes no (object, name) entries",
)


def fairseq_like_state():
    """What fairseq's checkpoints hold beside tensors: the legacy args and numpy
    arrays and scalars in the trainer's state."""
    return {
        "model": {"w": torch.ones(2)},
        "optimizer_history": [{"criterion_name": "label_smoothed_cross_entropy_rdrop", "optimizer_name": "adam",
                               "lr_scheduler_state": {"best": np.float64(2.5)}, "num_updates": 3}],
        "extra_state": {"train_iterator": {"epoch": 2}, "legacy_args": argparse.Namespace(seed=3),
                        "val_losses": np.array([2.5, 2.25], dtype=np.float32), "ema": {"w": torch.zeros(2)}},
    }


def assert_loaded_as_saved(loaded):
    assert loaded["optimizer_history"][-1]["lr_scheduler_state"]["best"] == np.float64(2.5)
    assert loaded["extra_state"]["legacy_args"] == argparse.Namespace(seed=3)
    assert np.array_equal(loaded["extra_state"]["val_losses"], np.array([2.5, 2.25], dtype=np.float32))


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(fairseq_like_state(), path)
    return path


@pytest.fixture(autouse=True)
def torchs_allow_list_restored():
    if not hasattr(torch.serialization, "get_safe_globals"):
        yield  # torch < 2.5 has no allow-list to restore
        return
    before = torch.serialization.get_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(before)


LOADERS = [
    "fairseq's load_checkpoint_to_cpu",
    "load_checkpoint_safely, weights-only",
    "load_checkpoint_safely, restricted pickle",
]


@pytest.fixture(params=LOADERS)
def loader(request, monkeypatch):
    """Each way a checkpoint is loaded that refuses what fairseq's checkpoints do
    not hold: fairseq's loader under torch's weights-only default (torch >= 2.6),
    and ours through torch's weights-only unpickler (torch >= 2.6) or through its
    restricted pickle module (what older torch uses; it works on every torch)."""
    weights_only = checkpoint_types.WEIGHTS_ONLY_BY_DEFAULT
    if request.param == LOADERS[0]:
        if not weights_only:
            pytest.skip(f"torch {torch.__version__} < 2.6: fairseq's loaders keep torch's default, weights_only=False")
        return lambda path: checkpoint_utils.load_checkpoint_to_cpu(str(path))
    if request.param == LOADERS[1] and not weights_only:
        pytest.skip(f"torch {torch.__version__} < 2.6: its allow-list takes no (object, name) entries")
    if request.param == LOADERS[2]:
        monkeypatch.setattr(checkpoint_types, "WEIGHTS_ONLY_BY_DEFAULT", False)
    return checkpoint_types.load_checkpoint_safely


@needs_weights_only_default
def test_fairseqs_checkpoint_loader_and_only_it_accepts_fairseqs_checkpoint_types(checkpoint):
    before = torch.serialization.get_safe_globals()
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        torch.load(checkpoint)
    assert_loaded_as_saved(checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint)))
    assert set(torch.serialization.get_safe_globals()) == set(before)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        torch.load(checkpoint)


def test_the_ema_loader_accepts_fairseqs_checkpoint_types(checkpoint):
    # behind --ema-seed-model and checkpoint_utils.save_ema_as_checkpoint
    state = checkpoint_utils.load_ema_from_checkpoint(str(checkpoint))
    assert torch.equal(state["model"]["w"], torch.zeros(2))
    assert state["extra_state"]["legacy_args"] == argparse.Namespace(seed=3)


@needs_weights_only_default
def test_a_users_own_allow_list_entries_survive_a_fairseq_load_that_fails(tmp_path):
    torch.serialization.add_safe_globals([argparse.Namespace, np.ndarray])
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        checkpoint_utils.load_checkpoint_to_cpu(str(broken))
    assert {argparse.Namespace, np.ndarray} <= set(torch.serialization.get_safe_globals())


@needs_weights_only_default
def test_overlapping_loads_in_two_threads_keep_each_others_entries(checkpoint, monkeypatch):
    """The first thread's load opens its window, waits until a second thread's
    load has opened and closed its own, and only then unpickles."""
    torch_load = torch.load
    second_done = threading.Event()

    def load_after_the_second_thread(*args, **kwargs):
        if threading.current_thread().name == "first":
            assert second_done.wait(timeout=60)
        return torch_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load_after_the_second_thread)
    results = {}

    def load(name):
        try:
            results[name] = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
        except Exception as error:
            results[name] = error
        if name == "second":
            second_done.set()

    first = threading.Thread(target=load, args=("first",), name="first")
    first.start()
    second = threading.Thread(target=load, args=("second",), name="second")
    second.start()
    for thread in (first, second):
        thread.join(timeout=120)
    for name in ("first", "second"):
        assert not isinstance(results[name], Exception), results[name]
        assert_loaded_as_saved(results[name])
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        torch_load(checkpoint)


@needs_weights_only_default
def test_a_load_in_its_window_never_sees_torchs_list_emptied_while_other_threads_open_and_close_theirs():
    """torch's unpickler reads its allow-list without our lock, so every change
    of the list must leave it whole: one thread loads through a window, again and
    again, while two others open and close windows with other entries, with the
    interpreter switching threads as often as it can."""
    buffer = io.BytesIO()
    torch.save({"args": argparse.Namespace(seed=3)}, buffer)
    data = buffer.getvalue()
    loads, failures, stop = 20_000, [], threading.Event()

    def load():
        for _ in range(loads):
            with allowed_while([argparse.Namespace]):
                try:
                    torch.load(io.BytesIO(data), weights_only=True)
                except Exception as error:  # torch's refusal, or a KeyError when the list changes mid-lookup
                    failures.append(error)

    def open_and_close(entries):
        while not stop.is_set():
            with allowed_while(entries):
                pass

    others = [fairseq_checkpoint_types() + broadcast_types(), broadcast_types()]
    threads = [threading.Thread(target=open_and_close, args=(entries,)) for entries in others]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        load()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        sys.setswitchinterval(switch_interval)
    assert not failures, f"{len(failures)} of {loads} loads failed, the first with: {failures[0]}"


def test_typing_any_is_named_explicitly_because_python_3_9_gives_it_no_qualified_name():
    # torch names an entry by its __module__ and __name__ (__qualname__ in later
    # versions); Python 3.9's typing.Any has neither name.
    assert (typing.Any, "typing.Any") in broadcast_types()
    assert typing.Any not in broadcast_types()


def test_fairseqs_checkpoint_types_load_through_every_loader(loader, checkpoint):
    assert_loaded_as_saved(loader(checkpoint))


def test_a_checkpoint_pickled_with_numpy_1_or_numpy_2_loads(loader, tmp_path):
    # numpy 1 names the functions numpy arrays and scalars unpickle through
    # numpy.core.multiarray; numpy 2 calls that module numpy._core.multiarray.
    # Protocol 2 writes a global as plain text, so the name can be rewritten.
    path = tmp_path / "numpy.pt"
    torch.save(fairseq_like_state(), path, pickle_protocol=2, _use_new_zipfile_serialization=False)
    saved = path.read_bytes().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    for module in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        path.write_bytes(saved.replace(b"cnumpy.core.multiarray\n", b"c" + module + b"\n"))
        assert path.read_bytes().count(b"c" + module + b"\n_reconstruct\n") == 1
        assert path.read_bytes().count(b"c" + module + b"\nscalar\n") == 1
        assert_loaded_as_saved(loader(path))


def test_a_numpy_object_array_is_refused(loader, tmp_path):
    # object arrays can hold anything; fairseq's checkpoints hold none
    path = tmp_path / "objects.pt"
    torch.save({**fairseq_like_state(), "labels": np.array(["a", 1], dtype=object)}, path)
    with pytest.raises(pickle.UnpicklingError, match="only boolean, integer, floating and complex"):
        loader(path)


def _reconstruct():
    return (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct


class DtypeWithoutBuild:
    """Pickles as a bare call ``numpy.dtype(spec)``, with no BUILD step after it,
    so no check of the built dtype's class can see it."""

    def __init__(self, spec):
        self.spec = spec

    def __reduce__(self):
        return (np.dtype, (self.spec,))


class ObjectArray:
    """Pickles as numpy pickles an object array, but with that bare dtype."""

    def __init__(self, items):
        self.items = items

    def __reduce__(self):
        state = (1, (len(self.items),), DtypeWithoutBuild("O"), False, list(self.items))
        return (_reconstruct(), (np.ndarray, (0,), b"b"), state)


def test_an_object_array_whose_dtype_skips_the_build_step_is_refused(loader, tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({**fairseq_like_state(), "labels": ObjectArray(["a", "b"])}, path)
    # the trick itself works: plain pickle builds an object array from it
    assert pickle.loads(pickle.dumps(ObjectArray(["a", "b"]))).dtype == np.dtype("O")
    with pytest.raises(pickle.UnpicklingError, match="only boolean, integer, floating and complex"):
        loader(path)


class RunsACommand:
    """Unpickling it calls ``os.system``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_pickle_that_would_call_os_system_is_refused_and_runs_nothing(loader, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({**fairseq_like_state(), "extra": RunsACommand(f"touch {marker}")}, path)
    with pytest.raises(pickle.UnpicklingError, match="system") as refused:
        loader(path)
    assert not marker.exists()
    if loader is checkpoint_types.load_checkpoint_safely:
        assert isinstance(refused.value, checkpoint_types.RefusedCheckpointError)
        assert refused.value.path == path and "system" in refused.value.reason


def test_a_class_that_is_not_on_the_list_is_refused(loader, tmp_path):
    path = tmp_path / "fraction.pt"
    torch.save({**fairseq_like_state(), "extra": fractions.Fraction(1, 3)}, path)
    with pytest.raises(pickle.UnpicklingError, match="Fraction"):
        loader(path)


class TouchesAFile:
    """Unpickling it calls a function named by the file: ``Path.touch``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (type(self.path).touch, (self.path,))


def test_average_checkpoints_reads_fairseqs_types_and_refuses_a_file_that_would_run_code(checkpoint, tmp_path):
    script = [sys.executable, str(REPO / "scripts" / "average_checkpoints.py"), "--output", str(tmp_path / "avg.pt")]
    subprocess.run([*script, "--inputs", str(checkpoint), str(checkpoint)], check=True, capture_output=True, timeout=300)
    assert_loaded_as_saved(checkpoint_types.load_checkpoint_safely(tmp_path / "avg.pt"))
    touched, ran = tmp_path / "touched", tmp_path / "ran"
    for extra, refused, marker in ((TouchesAFile(touched), "getattr", touched),
                                   (RunsACommand(f"touch {ran}"), "system", ran)):
        evil = tmp_path / f"{refused}.pt"
        torch.save({**fairseq_like_state(), "extra": extra}, evil)
        proc = subprocess.run([*script, "--inputs", str(evil)], capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert f"error: {evil} holds more than fairseq's checkpoints do (" in proc.stderr, proc.stderr
        assert refused in proc.stderr and "), so it is not loaded" in proc.stderr, proc.stderr
        assert not marker.exists()


@pytest.fixture(scope="module")
def fairseq_checkpoint(tmp_path_factory):
    """A checkpoint fairseq-train wrote: a language model after two updates."""
    root = tmp_path_factory.mktemp("lm")
    write_lines(root / "train.txt", head_lines(WIKITEXT2 / "wiki.train.tokens.gz", 200))
    write_lines(root / "valid.txt", head_lines(WIKITEXT2 / "wiki.valid.tokens", 40))
    run_tool("fairseq-preprocess", "--only-source", "--trainpref", root / "train.txt", "--validpref",
             root / "valid.txt", "--destdir", root / "bin", "--workers", 1)
    run_tool(
        "fairseq-train", root / "bin", "--task", "language_modeling", "--arch", "transformer_lm",
        "--decoder-layers", 1, "--decoder-embed-dim", 16, "--decoder-ffn-embed-dim", 32,
        "--decoder-attention-heads", 2, "--tokens-per-sample", 32, "--max-tokens", 256, *COMMON_TRAIN,
        "--criterion", "label_smoothed_cross_entropy_rdrop", "--label-smoothing", 0, "--max-update", 2,
        "--save-dir", root / "ckpt",
    )
    return root / "ckpt" / "checkpoint_last.pt"


def test_a_checkpoint_fairseq_train_wrote_loads_through_every_loader(loader, fairseq_checkpoint):
    state = loader(fairseq_checkpoint)
    assert state["optimizer_history"][-1]["num_updates"] == 2
    assert state["optimizer_history"][-1]["criterion_name"] == "LabelSmoothedCrossEntropyRDropCriterion"
    assert all(isinstance(value, torch.Tensor) for value in state["model"].values())


@needs_weights_only_default
def test_fairseqs_trainer_accepts_what_rank_0_broadcasts_only_while_it_restores_a_checkpoint(checkpoint):
    """Other ranks unpickle the state rank 0 sends (its config as omegaconf
    objects, its tensors as fairseq's placeholders) inside Trainer.load_checkpoint."""
    from fairseq.distributed.utils import _TensorPlaceholder
    from fairseq.trainer import Trainer
    from omegaconf import DictConfig

    seen = []

    class RestoringTrainer:
        @property
        def data_parallel_world_size(self):
            seen.append(set(torch.serialization.get_safe_globals()))
            raise RuntimeError("stop here")

    before = torch.serialization.get_safe_globals()
    with pytest.raises(RuntimeError, match="stop here"):
        Trainer.load_checkpoint(RestoringTrainer(), str(checkpoint))
    assert {DictConfig, _TensorPlaceholder, argparse.Namespace} <= seen[0]
    assert set(torch.serialization.get_safe_globals()) == set(before)
