"""The failures of the demos, recipes' scripts, benchmark and GPU check, each naming its cause and fix."""

import sys


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


class BadInput(ExperimentError):
    """Input a script cannot use: missing, malformed or inconsistent; nothing was written from it."""


def run_script(main):
    """Runs a script's ``main()`` and returns its exit status: an
    :class:`ExperimentError` is printed on stderr as it is, status 1."""
    try:
        return main()
    except ExperimentError as error:
        print(error, file=sys.stderr)
        return 1
