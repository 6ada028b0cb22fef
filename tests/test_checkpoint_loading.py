"""fairseq's checkpoint loaders accept fairseq's checkpoint types under torch's
``weights_only`` loading, for the duration of their call only, and leave
everything else on torch's allow-list as it was: a user's own entries, and
the entries of a load still running in another thread."""

import argparse
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils

import rdrop_fairseq  # noqa: F401  (wraps fairseq's loaders)

from .cli import REPO


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
    before = torch.serialization.get_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(before)


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


def test_a_users_own_allow_list_entries_survive_a_fairseq_load_that_fails(tmp_path):
    torch.serialization.add_safe_globals([argparse.Namespace, np.ndarray])
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        checkpoint_utils.load_checkpoint_to_cpu(str(broken))
    assert {argparse.Namespace, np.ndarray} <= set(torch.serialization.get_safe_globals())


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


def test_a_checkpoint_pickled_with_numpy_1_loads(tmp_path):
    # numpy 1 names the functions numpy arrays and scalars unpickle through
    # numpy.core.multiarray; numpy 2 calls that module numpy._core.multiarray.
    # Protocol 2 writes a global as plain text, so the name can be rewritten.
    path = tmp_path / "numpy1.pt"
    torch.save(fairseq_like_state(), path, pickle_protocol=2, _use_new_zipfile_serialization=False)
    numpy2 = path.read_bytes()
    numpy1 = numpy2.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert numpy1.count(b"cnumpy.core.multiarray\n_reconstruct\n") == 1
    assert numpy1.count(b"cnumpy.core.multiarray\nscalar\n") == 1
    path.write_bytes(numpy1)
    assert_loaded_as_saved(checkpoint_utils.load_checkpoint_to_cpu(str(path)))


def test_a_numpy_object_array_is_refused(tmp_path):
    # object arrays can hold anything; fairseq's checkpoints hold none
    path = tmp_path / "objects.pt"
    torch.save({"model": {}, "labels": np.array(["a", 1], dtype=object)}, path)
    with pytest.raises(pickle.UnpicklingError, match="ObjectDType"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))


class TouchesAFile:
    """Unpickling it calls a function named by the file: ``Path.touch``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (type(self.path).touch, (self.path,))


def test_average_checkpoints_reads_fairseqs_types_and_refuses_a_file_that_would_run_code(checkpoint, tmp_path):
    script = [sys.executable, str(REPO / "scripts" / "average_checkpoints.py"), "--output", str(tmp_path / "avg.pt")]
    subprocess.run([*script, "--inputs", str(checkpoint), str(checkpoint)], check=True, capture_output=True, timeout=300)
    assert_loaded_as_saved(checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "avg.pt")))
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({**fairseq_like_state(), "extra": TouchesAFile(marker)}, evil)
    proc = subprocess.run([*script, "--inputs", str(evil)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"error: {evil} holds more than fairseq's checkpoints do (Unsupported global: GLOBAL getattr was not " \
        "an allowed global by default), so it is not loaded" in proc.stderr
    assert not marker.exists()


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
