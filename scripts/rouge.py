"""ROUGE-1/2/L/Lsum F1 of a hypothesis file against reference files (run by
evaluate_cnn_dm.sh); the code is rdrop_experiments.rouge."""

import sys

from rdrop_experiments.errors import run_script
from rdrop_experiments.rouge import main

if __name__ == "__main__":
    sys.exit(run_script(main))
