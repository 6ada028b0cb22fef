"""Draws the curves of fairseq training logs, or of every run a demo's results.json lists.

    python scripts/fairseq_logs.py plot --out curves.png baseline=runs/a/train.log rdrop=runs/b/train.log
    python scripts/fairseq_logs.py plot --out curves.png runs/multi30k-demo/results.json
"""

import sys

from rdrop_experiments.results import main

if __name__ == "__main__":
    sys.exit(main())
