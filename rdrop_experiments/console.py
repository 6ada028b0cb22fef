"""Lines for a person to follow, printed above any progress bars."""

import sys

_prefix = ["demo"]


def set_prefix(name):
    """Names the program in front of every line from now on (``[name] ...``)."""
    _prefix[0] = name


def log(message):
    """A line above the progress bars (plain print would tear them)."""
    from tqdm import tqdm

    tqdm.write(f"[{_prefix[0]}] {message}", file=sys.stdout)
    sys.stdout.flush()


def print_table(header, rows):
    """A plain-text table, columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
