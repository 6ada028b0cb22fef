"""The CLINC150 sentence-classification demo, end to end in the tiny budget."""

import json
import subprocess
import sys

from .helpers.demos import load_demo
from .helpers.fairseq_runs import REPO, train_records


def test_classification_demo_writes_table_results_and_plot(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples/sentence_prediction/demo_clinc150.py"), "--budget", "tiny",
         "--seeds", "1", "2", "--threads", "1", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    table = proc.stdout[proc.stdout.index("run      | alpha | updates | seed | test accuracy | best valid accuracy"):]
    for row in ("baseline | 0     | 30      | 1", "rdrop    | 1     | 30      | 2", "rdrop    | 1     | 30      | mean"):
        assert row in table
    assert "rdrop - baseline, accuracy (%), paired by seed:\n  test accuracy: " in table and "(2 seeds; sd " in table

    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["runs"]) == {"baseline", "rdrop"}
    for name, arm in results["runs"].items():
        for seed in arm["seeds"]:
            records = train_records(seed["log"], "valid")
            tests = {r["test_num_updates"]: r["test_accuracy"] for r in train_records(seed["log"], "test")}
            # The checkpoint fairseq kept: the last validation with the best accuracy, and its test accuracy.
            best = max(r["valid_accuracy"] for r in records)
            assert seed["best_valid_accuracy"] == best
            assert seed["best_update"] == [r["valid_num_updates"] for r in records if r["valid_accuracy"] == best][-1]
            assert seed["test_accuracy"] == tests[seed["best_update"]]
            assert 0.0 <= seed["test_accuracy"] <= 100.0
            logged = train_records(seed["log"])
            if name == "rdrop":
                assert logged and all(r["kl_loss"] > 0 for r in logged)
            else:
                assert logged and all("kl_loss" not in r for r in logged)
    per_seed = results["gains"]["rdrop - baseline"]["test accuracy"]["per_seed"]
    runs = results["runs"]
    assert per_seed == {str(s): round(r["test_accuracy"] - b["test_accuracy"], 4)
                        for s, r, b in zip((1, 2), runs["rdrop"]["seeds"], runs["baseline"]["seeds"])}
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_classification_demo_trains_with_the_sentence_prediction_criterion_from_a_cls_token():
    """fairseq's reading of the default run's command: the class comes from the
    first token's features, so the first token must be <s> (--init-token 0)."""
    from fairseq import options

    from rdrop_experiments.demo import train_args

    demo = load_demo("clinc150")
    run = type("Run", (), {"seed": 1, "alpha": 1.0, "budget": demo.budgets["default"]})
    parsed = options.parse_args_and_arch(options.get_training_parser(),
                                         [str(a) for a in train_args(demo, "data-bin", run, demo.setup)])
    assert (parsed.task, parsed.criterion, parsed.arch) == ("sentence_prediction", "sentence_prediction_rdrop", "roberta")
    assert parsed.init_token == 0 and parsed.num_classes == 150 and parsed.rdrop_alpha == 1.0
    assert parsed.valid_subset == "valid,test" and parsed.best_checkpoint_metric == "accuracy"
    assert parsed.maximize_best_checkpoint_metric
