"""The package imports without fairseq, and registers its criteria from a pip install."""

import subprocess
import sys

from .cli import REPO


def test_the_loss_module_imports_and_runs_without_fairseq():
    code = (
        "import sys; sys.modules['fairseq'] = None\n"
        "import torch\n"
        "from rdrop_fairseq.loss import rdrop_loss\n"
        "out = rdrop_loss(torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.tensor([[1, 2, -100]] * 2), alpha=1.0)\n"
        "assert out.ntokens.item() == 4 and out.kl.item() > 0\n"
        "assert 'rdrop_fairseq.criterions' not in sys.modules\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_a_pip_installed_copy_works_as_user_dir_and_documents_its_flag(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    installed = target / "rdrop_fairseq"
    assert (installed / "criterions" / "label_smoothed_cross_entropy_rdrop.py").exists()
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
