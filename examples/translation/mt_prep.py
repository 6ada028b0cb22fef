#!/usr/bin/env python3
"""The translation text stages as subcommands (tokenize, clean, split, learn-bpe,
apply-bpe); the code is rdrop_experiments.mt_prep."""

import sys

from rdrop_experiments.errors import run_script
from rdrop_experiments.mt_prep import main

if __name__ == "__main__":
    sys.exit(run_script(main))
