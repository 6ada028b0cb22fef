"""The demos train exactly what they trained before their plumbing moved into
rdrop_experiments: fairseq's reading of every budget's, arm's and seed's
fairseq-train command, against the commands recorded from the former code
(tests/data/demo_commands.json)."""

import json
from pathlib import Path

import pytest

from rdrop_experiments.demo import train_args
from rdrop_experiments.scheduler import arms
from rdrop_experiments.training import TrainingRun

from .helpers.demos import load_demo
from .helpers.fairseq_runs import REPO

RECORDED = json.loads((Path(__file__).parent / "data" / "demo_commands.json").read_text())


def fairseq_reading(args):
    from fairseq import options

    parsed = options.parse_args_and_arch(options.get_training_parser(), [str(a) for a in args])
    return vars(parsed)


@pytest.mark.parametrize("name", sorted(RECORDED["tiny_runs_logged"]))
def test_every_budgets_training_commands_read_as_before_the_move(name, tmp_path):
    demo = load_demo(name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    checked = 0
    for budget_name, budget in demo.budgets.items():
        setup = {**demo.setup, **budget.get("setup", {})}
        for arm, alpha, updates in arms(demo.alpha, budget):
            for seed in budget.get("seeds", (1,)):
                run = TrainingRun(arm, alpha, seed, dict(budget, max_update=updates), 1, tmp_path,
                                  lambda run: train_args(demo, bin_dir, run, setup))
                now = [str(a).replace(str(bin_dir), "<bin>").replace(str(REPO), "<repo>") for a in run.train_args]
                before = RECORDED["train_args"][f"{name} {budget_name} {arm} seed{seed}"]
                assert sorted(now) == sorted(before)
                assert fairseq_reading([a.replace("<bin>", str(bin_dir)).replace("<repo>", str(REPO)) for a in now]) \
                    == fairseq_reading([a.replace("<bin>", str(bin_dir)).replace("<repo>", str(REPO)) for a in before])
                checked += 1
    recorded = sum(key.startswith(f"{name} ") for key in RECORDED["train_args"])
    assert checked == recorded > 0
