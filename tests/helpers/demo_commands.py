"""The fairseq commands a demo ran, read back from its logs, in a form that compares across folders and checkouts."""

import re
from pathlib import Path

from .fairseq_runs import REPO


def normalized(line, work, repo=REPO):
    """(program, sorted arguments) of a logged ``$ command`` line, with the work
    folder, the checkout, the data folder's name and the runs' content tags
    replaced by placeholders: what stays is what the command asks of fairseq."""
    program, *args = line[2:].split(" ")
    text = " ".join(args).replace(str(work), "<work>").replace(str(repo), "<repo>")
    text = re.sub(r"<work>/data-[^/ ]+", "<work>/<data>", text)
    text = re.sub(r"(<work>/[a-z_0-9]+-alpha[\d.]+-seed\d+-\d+)-[0-9a-f]{8}", r"\1-<tag>", text)
    return [Path(program).name, sorted(text.split(" "))]


def logged_commands(work, repo=REPO):
    """Every fairseq command logged under ``work`` (the first line of each run's
    logs and each ``$`` line of a preprocessing log), normalized and sorted."""
    commands = []
    for log in sorted(Path(work).rglob("*")):
        if log.is_file() and log.suffix in (".log", ".txt"):
            commands += [normalized(line, work, repo) for line in log.read_text(errors="replace").splitlines()
                         if re.match(r"^\$ \S*/fairseq-", line)]
    return sorted(commands)
