"""The demos' modules, loaded from their files (they are entry points, not a package)."""

import importlib.util

from .fairseq_runs import REPO

DEMO_FILES = {
    "multi30k": REPO / "examples" / "translation" / "demo_multi30k.py",
    "scitldr": REPO / "examples" / "summarization" / "demo_scitldr.py",
    "wikitext2": REPO / "examples" / "language_model" / "demo_wikitext2.py",
    "clinc150": REPO / "examples" / "sentence_prediction" / "demo_clinc150.py",
}


def load_demo_module(name):
    """The module of demo ``name`` (a key of DEMO_FILES), loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"demo_{name}", DEMO_FILES[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_demo(name):
    """An instance of demo ``name``'s Demo subclass."""
    module = load_demo_module(name)
    (demo_class,) = [value for value in vars(module).values()
                     if isinstance(value, type) and value.__module__ == module.__name__ and hasattr(value, "budgets")]
    return demo_class()
