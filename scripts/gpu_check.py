"""The GPU check: the benchmark, every recipe's SMOKE=1 run and a resume on a GPU (or the CPU),
checked in minutes; run it with bash scripts/gpu_check.sh, which finds a Python that has the
project. The code is rdrop_experiments.gpu_check.

    bash scripts/gpu_check.sh --quick --out docs/gpu-check-h100.json
"""

import sys

from rdrop_experiments.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
