#!/usr/bin/env python3
"""WMT'14 En-De or En-Fr text as fairseq's preparation scripts build it (run by
prepare_wmt14.sh); the code is rdrop_experiments.wmt14_data."""

import sys

from rdrop_experiments.errors import run_script
from rdrop_experiments.wmt14_data import main

if __name__ == "__main__":
    sys.exit(run_script(main))
