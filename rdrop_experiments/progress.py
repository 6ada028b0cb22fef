"""A progress bar for one fairseq-train run, fed by its ``--log-format json`` output."""

import sys

from rdrop_experiments.fairseq_logs import parse_record


class TrainingProgress:
    """Updates done of the budget, the latest training loss and KL, the latest
    validation loss and BLEU, and the time left; ``feed`` takes each output line."""

    def __init__(self, name, max_update, position):
        from tqdm import tqdm

        interactive = sys.stdout.isatty()
        self.bar = tqdm(
            total=max_update, desc=name, unit="upd", position=position, leave=False, file=sys.stdout,
            dynamic_ncols=interactive, ncols=None if interactive else 120, mininterval=1 if interactive else 60,
        )
        self.figures = {}

    def feed(self, line):
        parsed = parse_record(line)
        if parsed is None:
            return
        tag, record = parsed
        if tag == "train_inner":
            keys = {"loss": "loss", "kl_loss": "kl"}
            updates = record.get("num_updates")
        elif tag == "valid":
            keys = {"valid_loss": "valid loss", "valid_bleu": "valid BLEU"}
            updates = record.get("valid_num_updates")
        else:
            return
        for key, label in keys.items():
            if isinstance(record.get(key), float):
                self.figures[label] = record[key]
        order = ("loss", "kl", "valid loss", "valid BLEU")
        self.figures = {label: self.figures[label] for label in order if label in self.figures}
        if isinstance(updates, float) and updates > self.bar.n:
            self.bar.update(int(updates) - self.bar.n)
        self.bar.set_postfix_str(self.summary(), refresh=False)

    def summary(self):
        return ", ".join(f"{label} {value:.3g}" for label, value in self.figures.items())

    def close(self):
        self.bar.close()
