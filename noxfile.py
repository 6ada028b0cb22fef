"""The compatibility matrix: the plugin's tests in each environment fairseq users have.

Each session builds a fresh environment from the package registries (torch first,
then fairseq), installs this project from the sdist and the wheel that ``python -m
build`` makes, and runs the tests that apply there, with a JUnit report in
runs/compat/SESSION.xml. ``nox -l`` lists the sessions; README.md
("Compatibility") says how to point nox at your interpreters.
"""

import shutil
from pathlib import Path

import nox

nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent

# The tests of the plugin itself and two recipes' smoke runs; the demos and
# the other recipe tests run on the pinned stack only (their plots need a
# newer numpy).
PLUGIN_TESTS = [
    "tests/test_loss.py",
    "tests/test_criterion.py",
    "tests/test_adaptive_loss_rdrop.py",
    "tests/test_language_model_criterion.py",
    "tests/test_warmup_alpha.py",
    "tests/test_reliability_bad_input.py",
    "tests/test_distributed_equivalence.py",
    "tests/test_activation_checkpointing.py",
    "tests/test_hydra_config.py",
    "tests/test_checkpoint_loading.py",
    "tests/test_cli_end_to_end.py",
    "tests/test_resume.py",
    "tests/test_multi_gpu_training.py",
    "tests/test_pytorch_ddp.py",
    "tests/test_seq2seq_tasks.py",
    "tests/test_fairseq_fixes.py",
    "tests/test_sentence_prediction_rdrop.py",
    "tests/test_packaging.py",
    # a recipe's preparation, training and evaluation (fairseq-generate, BLEU),
    # and a language model's (fairseq-eval-lm), as their SMOKE=1 runs do
    "tests/test_translation_recipes.py::test_iwslt14_smoke_mode_prepares_trains_and_evaluates_on_cpu",
    "tests/test_language_model_recipes.py::test_smoke_mode_trains_a_tiny_model_with_r_drop_and_evaluates_it",
]

# PyPI's fairseq 0.12.2 is installed as its users install it, with build
# isolation: its sdist lacks a source file of its optional torch extensions,
# which then are not built (nothing here needs them). It asks for any
# torchaudio, whose newest release would replace the torch installed first, so
# torch, torchaudio and numpy are named again beside it; and for omegaconf
# 2.0, whose metadata pip >= 24.1 refuses.
STACKS = {
    "pinned": dict(
        python="3.11", label="the pinned stack", tests=[], pip="pip",
        torch=["torch==2.13.0", "numpy==2.4.6"], fairseq=["--no-build-isolation", "-r", "requirements.txt"],
    ),
    "pinned-py3.12": dict(
        python="3.12", label="the pinned stack", tests=PLUGIN_TESTS, pip="pip",
        torch=["torch==2.13.0", "numpy==2.4.6"], fairseq=["--no-build-isolation", "-r", "requirements.txt"],
    ),
    "fairseq-0.12.2": dict(
        python="3.10", label="fairseq==0.12.2", tests=PLUGIN_TESTS, pip="pip==24.0",
        torch=["torch==2.1.2", "torchaudio==2.1.2", "numpy==1.23.5"],
        fairseq=["fairseq==0.12.2", "pytest==9.2.0", "sentencepiece==0.2.0", "sacrebleu==2.4.3",
                 "sacremoses==0.2.0", "subword-nmt==0.3.8"],
    ),
    "fairseq-0.12.2-torch-2.0": dict(
        python="3.9", label="fairseq==0.12.2", tests=PLUGIN_TESTS, pip="pip==24.0",
        torch=["torch==2.0.1", "torchaudio==2.0.2", "numpy==1.23.5"],
        fairseq=["fairseq==0.12.2", "pytest==8.3.5", "sentencepiece==0.2.0", "sacrebleu==2.4.3",
                 "sacremoses==0.2.0", "subword-nmt==0.3.8"],
    ),
}


def _install_stack(session, stack):
    # torch first, so that nothing later pulls another build of it; the pinned
    # fairseq builds its C++ extensions against it (no build isolation).
    session.install("--upgrade", stack["pip"])
    session.install(*stack["torch"], "setuptools", "wheel", "cython")
    fairseq = stack["fairseq"]
    session.install(*fairseq, *([] if fairseq[0] == "--no-build-isolation" else stack["torch"]))


def _install_project(session):
    """Builds the sdist and the wheel and installs both, the wheel last."""
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("build")
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT), silent=True)
    [sdist], [wheel] = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    session.install("--no-deps", str(sdist))
    session.install("--no-deps", "--force-reinstall", str(wheel))
    # Imported from outside the checkout, so the installed copy is the one read.
    with session.chdir(session.create_tmp()):
        session.run(
            "python", "-c",
            "import os, rdrop_fairseq; from fairseq.criterions import CRITERION_REGISTRY as r;"
            "assert 'site-packages' in rdrop_fairseq.__file__, rdrop_fairseq.__file__;"
            "assert {'label_smoothed_cross_entropy_rdrop', 'adaptive_loss_rdrop'} <= set(r), sorted(r);"
            "print('installed', rdrop_fairseq.__version__, 'from', os.path.dirname(rdrop_fairseq.__file__))",
        )


def _session(name, stack):
    @nox.session(name=name, python=stack["python"])
    def run(session):
        _install_stack(session, stack)
        _install_project(session)
        report = ROOT / "runs" / "compat" / f"{name}.xml"
        session.run(
            "python", "-m", "pytest", "-p", "no:cacheprovider", "-rs", f"--junitxml={report}",
            *stack["tests"], *session.posargs, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        )

    run.__doc__ = f"Python {stack['python']}, {stack['torch'][0]}, {stack['label']}: " + (
        "the plugin's tests and two recipes' smoke runs" if stack["tests"] else "the whole suite"
    )
    return run


for _name, _stack in STACKS.items():
    _session(_name, _stack)
