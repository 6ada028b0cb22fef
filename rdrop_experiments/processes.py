"""Commands in process groups of their own, their output in a log, and stopping them all.

A command runs in its own process group, so that stopping ends it with every
process it started, and a terminal's Ctrl-C reaches the caller alone, which
then stops its commands itself (:func:`stop_running_commands`).
"""

import os
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from rdrop_experiments.errors import CommandFailed, Stopped

# Commands running now, and whether the caller is stopping, so that no command starts then.
_RUNNING = set()
_RUNNING_LOCK = threading.Lock()
_STOPPING = threading.Event()
# Seconds a stopped command has to exit after SIGTERM before its processes are killed.
STOP_GRACE = 5
# The signals that stop the work, as the last lines name them.
STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (the terminal closed) raised as Ctrl-C is, naming its signal."""

    def __init__(self, signum):
        super().__init__(STOP_SIGNALS[signum])
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def interrupt_on_sigterm_and_sighup():
    """From now on SIGTERM and SIGHUP raise :class:`Interrupted`, as Ctrl-C raises KeyboardInterrupt."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)


def signal_of(interrupt):
    """The signal number behind a KeyboardInterrupt: SIGINT unless it is :class:`Interrupted`."""
    return getattr(interrupt, "signum", signal.SIGINT)


def command_line(cmd):
    return " ".join(str(c) for c in cmd)


def run_command(cmd, log_path, env=None, on_line=None):
    """Runs ``cmd`` with its output appended to ``log_path`` (after a ``$ command``
    line), feeding each line to ``on_line``.

    Raises :class:`CommandFailed` on a non-zero exit, and :class:`Stopped` when
    the command was stopped or not started because the caller is stopping."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    program = Path(str(cmd[0])).name
    tail = deque(maxlen=30)
    # Line-buffered, so the log can be followed (tail -f) while the command runs.
    with open(log_path, "a", encoding="utf-8", buffering=1) as sink:
        sink.write(f"$ {command_line(cmd)}\n")
        with _RUNNING_LOCK:
            if _STOPPING.is_set():
                raise Stopped(f"{program} not started: stopping")
            proc = subprocess.Popen(
                [str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                errors="replace", start_new_session=True,
            )
            _RUNNING.add(proc)
        try:
            for line in proc.stdout:
                sink.write(line)
                tail.append(line)
                if on_line:
                    on_line(line)
            proc.wait()
            # What the command left running in its group ends with it.
            _signal_group(proc, signal.SIGKILL)
        except BaseException:
            # Ctrl-C while the main thread runs a command (data preparation).
            end_process_groups([proc])
            raise
        finally:
            proc.stdout.close()
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
    if proc.returncode != 0:
        if _STOPPING.is_set():
            raise Stopped(f"{program} stopped; its log: {log_path}")
        raise CommandFailed(program, proc.returncode, tail, log_path)


def _signal_group(proc, signum):
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass  # the whole group has exited


def end_process_groups(procs, grace=STOP_GRACE):
    """Ends each command with every process of its group: SIGTERM, then SIGKILL
    for whatever is left after ``grace`` seconds."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc, signal.SIGKILL)


def stop_running_commands():
    """No command starts from now on, and every running one ends with its process group."""
    with _RUNNING_LOCK:
        _STOPPING.set()
        running = list(_RUNNING)
    end_process_groups(running)


def accept_commands():
    """Commands start again (after :func:`stop_running_commands`)."""
    _STOPPING.clear()


def stopping():
    return _STOPPING.is_set()
