"""The criterion from a hydra yaml config: fairseq-hydra-train with
examples/translation/config/rdrop_multi30k.yaml on a Multi30k slice."""

import importlib.util

import pytest
from fairseq import checkpoint_utils
from omegaconf import OmegaConf

import rdrop_fairseq  # noqa: F401  (lets fairseq's loader read fairseq's checkpoint types under weights_only)

from .cli import REPO, USER_DIR, run_tool, train_records

CONFIG_DIR = REPO / "examples" / "translation" / "config"
_spec = importlib.util.spec_from_file_location("demo_multi30k", REPO / "examples" / "translation" / "demo_multi30k.py")
demo_multi30k = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_multi30k)


@pytest.fixture(scope="module")
def hydra_run(multi30k_bin):
    save = multi30k_bin / "hydra"
    save.mkdir()
    # Only paths, the length of the run and the warm-up are overridden.
    run_tool(
        "fairseq-hydra-train", "--config-dir", CONFIG_DIR, "--config-name", "rdrop_multi30k",
        f"common.user_dir={USER_DIR}", f"task.data={multi30k_bin / 'bin'}", f"checkpoint.save_dir={save}",
        f"common.log_file={save / 'train.log'}", "optimization.max_update=3", "common.log_interval=1",
        "criterion.rdrop_alpha_warmup_updates=2",
        cwd=multi30k_bin,
    )
    return save


def test_the_config_names_the_criterion_with_the_papers_alpha():
    config = OmegaConf.load(CONFIG_DIR / "rdrop_multi30k.yaml")
    assert config.criterion._name == "label_smoothed_cross_entropy_rdrop"
    assert config.criterion.rdrop_alpha == 5.0 and config.criterion.label_smoothing == 0.1
    assert OmegaConf.is_missing(config.task, "data")


def test_the_config_is_the_demos_model_optimiser_and_schedule():
    config = OmegaConf.load(CONFIG_DIR / "rdrop_multi30k.yaml")
    setup, budget = demo_multi30k.SETUP, demo_multi30k.BUDGETS["full"]
    for side in (config.model.encoder, config.model.decoder):
        assert (side.layers, side.embed_dim, side.ffn_embed_dim, side.attention_heads) == (
            setup["encoder_layers"], setup["embed_dim"], setup["ffn_dim"], setup["heads"])
    assert config.model.dropout == setup["dropout"] and config.dataset.max_tokens == setup["max_tokens"]
    assert list(config.optimization.lr) == [setup["lr"]] and config.lr_scheduler.warmup_updates == setup["warmup"]
    assert config.optimization.max_update == budget["max_update"]
    assert config.dataset.validate_interval_updates == budget["interval"]


def test_hydra_train_trains_with_the_criterion_and_logs_kl_and_the_warmed_up_alpha(hydra_run):
    records = train_records(hydra_run / "train.log")
    assert [r["num_updates"] for r in records] == [1, 2, 3]
    assert all(r["kl_loss"] > 0 for r in records)
    assert [r["rdrop_alpha"] for r in records] == pytest.approx([0.0, 2.5, 5.0])
    assert "valid_kl_loss" not in train_records(hydra_run / "train.log", "valid")[-1]


def test_the_checkpoint_records_the_yaml_setup_and_loads_with_fairseqs_loader(hydra_run):
    state = checkpoint_utils.load_checkpoint_to_cpu(str(hydra_run / "checkpoint_last.pt"))
    criterion = state["cfg"]["criterion"]
    assert criterion["_name"] == "label_smoothed_cross_entropy_rdrop" and criterion["rdrop_alpha"] == 5.0
    model = state["model"]
    assert model["encoder.embed_tokens.weight"].shape[1] == demo_multi30k.SETUP["embed_dim"]
    assert sum(name.endswith("fc1.weight") for name in model) == 4  # 2 encoder + 2 decoder layers
