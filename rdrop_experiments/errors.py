"""The failures of the demos, benchmark and GPU check, each naming its cause and fix."""


class ExperimentError(Exception):
    """A failure whose message says what went wrong and what to do; entry points
    print it and exit with status 1."""


class FairseqNotFound(ExperimentError):
    """fairseq's console scripts are not installed where the demo runs."""


class CommandFailed(ExperimentError):
    """A command exited with a non-zero status. ``tail`` holds its log's last
    lines, ``log_path`` the whole log."""

    def __init__(self, program, returncode, tail, log_path):
        self.program, self.returncode, self.tail, self.log_path = program, returncode, list(tail), log_path
        super().__init__(f"{program} failed (exit status {returncode}); the last lines of its log:\n"
                         + "".join(self.tail) + f"full log: {log_path}")


class Stopped(ExperimentError):
    """A command stopped, or never started, because the work is stopping."""


class IncompleteOutput(ExperimentError):
    """A command succeeded but its output lacks what was asked of it."""
