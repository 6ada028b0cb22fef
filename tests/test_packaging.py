"""The loss imports with torch alone, importing the package leaves torch's
allow-list alone (fairseq's loaders: tests/test_checkpoint_loading.py), and a
pip install registers the criteria."""

import json
import os
import re
import shutil
import subprocess
import sys
import venv

import pytest
import torch

from .helpers.fairseq_runs import REPO


# What each case takes away before anything is imported, as a leaner or older
# install lacks it: a line run first, or a folder put first on PYTHONPATH.
LEANER_INSTALLS = {
    "no fairseq": ("sys.modules['fairseq'] = None", None),
    "no numpy": ("sys.modules['numpy'] = None", None),
    "a fairseq that fails to import": ("", "broken"),
}


@pytest.mark.parametrize("case", LEANER_INSTALLS)
def test_the_loss_imports_and_runs_with_torch_alone(tmp_path, case):
    broken = tmp_path / "broken"
    (broken / "fairseq").mkdir(parents=True)
    (broken / "fairseq" / "__init__.py").write_text("raise ImportError('a half-installed extension')\n")
    take_away, first_on_path = LEANER_INSTALLS[case]
    env = dict(os.environ, PYTHONPATH=str(tmp_path / first_on_path)) if first_on_path else None
    code = (
        "import json, sys, warnings\n"
        f"{take_away}\n"
        "import torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from rdrop_fairseq.loss import rdrop_loss\n"
        "out = rdrop_loss(torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.tensor([[1, 2, -100]] * 2), alpha=1.0)\n"
        "assert out.ntokens.item() == 4 and out.kl.item() > 0\n"
        "print(json.dumps({'registered': 'rdrop_fairseq.criterions' in sys.modules,\n"
        "                  'warnings': [str(w.message) for w in caught if 'rdrop_fairseq' in str(w.message)]}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["registered"] is False
    if case in ("no numpy", "a fairseq that fails to import"):
        [warning] = result["warnings"]
        assert "fairseq is installed but does not import" in warning and "rdrop_fairseq.loss works" in warning
        assert case == "no numpy" or "a half-installed extension" in warning
    else:
        assert result["warnings"] == []


@pytest.mark.skipif(not hasattr(torch.serialization, "get_safe_globals"),
                    reason="torch < 2.4 has no allow-list of its own to leave alone")
def test_importing_the_package_leaves_torchs_weights_only_allow_list_as_it_was():
    code = (
        "import sys, torch\n"
        "before = torch.serialization.get_safe_globals()\n"
        "import rdrop_fairseq.loss\n"
        "assert 'rdrop_fairseq.criterions' in sys.modules  # the criteria too, fairseq being installed\n"
        "print(torch.serialization.get_safe_globals() == before)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["True"], proc.stdout + proc.stderr[-2000:]


def test_a_pip_installed_copy_works_as_user_dir_and_documents_its_flag(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    installed = target / "rdrop_fairseq"
    assert (installed / "criterions" / "label_smoothed_cross_entropy_rdrop.py").exists()
    assert (target / "rdrop_experiments" / "demo.py").exists()  # the demos' plumbing comes with the project
    code = (
        "import argparse, sys\n"
        "from fairseq import utils\n"
        "from fairseq.criterions import CRITERION_REGISTRY, CRITERION_DATACLASS_REGISTRY\n"
        "from fairseq.dataclass.utils import gen_parser_from_dataclass\n"
        f"utils.import_user_module(argparse.Namespace(user_dir={str(installed)!r}))\n"
        "cls = CRITERION_REGISTRY['label_smoothed_cross_entropy_rdrop']\n"
        "print(sys.modules[cls.__module__].__file__)\n"
        "parser = argparse.ArgumentParser()\n"
        "gen_parser_from_dataclass(parser, CRITERION_DATACLASS_REGISTRY['label_smoothed_cross_entropy_rdrop']())\n"
        "print(parser.format_help())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module_file, help_text = proc.stdout.split("\n", 1)
    assert module_file.startswith(str(installed))
    help_text = " ".join(help_text.split())
    assert "--rdrop-alpha RDROP_ALPHA weight of the R-Drop term" in help_text
    assert "--label-smoothing" in help_text and "--report-accuracy" in help_text


def test_loading_the_plugin_imports_none_of_the_demos_dependencies():
    """What --user-dir loads brings in nothing of the demos: neither their
    plumbing nor tqdm, matplotlib, sacrebleu or sentencepiece beyond what
    fairseq's own modules import."""

    def imported(extra):
        code = (
            "import sys\n"
            "import fairseq.checkpoint_utils, fairseq.criterions, fairseq.models, fairseq.tasks, fairseq.trainer\n"
            f"{extra}\n"
            "print(' '.join(sorted(m for m in ('rdrop_experiments', 'tqdm', 'matplotlib', 'sacrebleu', "
            "'sentencepiece') if m in sys.modules)))\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.split()

    assert imported("import rdrop_fairseq") == imported("")


def readme_install_line():
    """The README's command that installs this project into a user's environment."""
    section = (REPO / "README.md").read_text().split("## Install into your own environment", 1)[1]
    [line] = re.findall(r"^pip install .*-e \.$", section, flags=re.M)
    return line.split()


def test_the_readmes_install_line_works_with_the_setuptools_of_pythons_own_venv(tmp_path):
    # Python 3.10's and 3.11's venv bring setuptools 65.5, which predates the
    # SPDX license field (77): the line must not build with the environment's own.
    project = tmp_path / "project"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (project / name).parent.mkdir(exist_ok=True)
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "rdrop_fairseq", project / "rdrop_fairseq", ignore=shutil.ignore_patterns("__pycache__"))
    venv.create(tmp_path / "env", with_pip=True)
    python = str(tmp_path / "env" / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "setuptools==65.5.0"], check=True, timeout=300)
    pip, install, *options = readme_install_line()
    assert (pip, install) == ("pip", "install")
    proc = subprocess.run([python, "-m", "pip", "install", "-q", *options], cwd=project,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('rdrop-fairseq'))"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert found.stdout.strip() == "0.1.0", found.stderr[-2000:]
