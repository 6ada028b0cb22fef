"""What R-Drop costs here: the KL term against the official formula, a training
step against the baseline and upstream fairseq's R-Drop, and the recipes' own
models; the code is rdrop_experiments.benchmark (its doc, or --help, says what
each part measures).

    python scripts/benchmark_rdrop.py                  # CPU: tables on stdout, JSON in --out
    python scripts/benchmark_rdrop.py --device cuda    # on a GPU: KL table and the recipes' models
    python scripts/benchmark_rdrop.py --quick          # small sizes, a smoke test
    python scripts/benchmark_rdrop.py --parts kl --kl-sizes 1024x250000   # one row of the KL table
"""

from rdrop_experiments.benchmark import main

if __name__ == "__main__":
    main()
