"""Short hashes that name what a command makes, by its arguments and the content of its paths."""

import hashlib
from pathlib import Path


def content_hash(path):
    """A sha1 of what a file or folder holds: each file's path inside it and its
    bytes, in sorted order. Logs and Python's byte-code caches are left out:
    they change from one making to the next without changing the content."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: a command's path argument must exist to be identified "
                                "by its content")
    if path.is_file():
        files = [path]
    else:
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix not in (".log", ".pyc")
                       and "__pycache__" not in f.relative_to(path).parts)
    digest = hashlib.sha1()
    for file in files:
        data = file.read_bytes()
        digest.update(f"{file.relative_to(path).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def command_tag(program, args):
    """What ``program ARGS`` makes, as 8 hex digits: every argument in order, each
    path standing for its content. A changed flag, data set or plugin code
    (``--user-dir``) gives a new tag; the same ones elsewhere give the same tag."""
    digest = hashlib.sha1(program.encode())
    for arg in args:
        digest.update(b"\0" + (f"<{content_hash(arg)}>" if isinstance(arg, Path) else str(arg)).encode())
    return digest.hexdigest()[:8]
