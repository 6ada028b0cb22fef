#!/usr/bin/env python3
"""IWSLT'14 De-En text as fairseq's prepare-iwslt14.sh builds it (run by
prepare_iwslt14.sh); the code is rdrop_experiments.iwslt14_data."""

import sys

from rdrop_experiments.errors import run_script
from rdrop_experiments.iwslt14_data import main

if __name__ == "__main__":
    sys.exit(run_script(main))
