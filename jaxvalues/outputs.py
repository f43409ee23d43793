"""Output locations, checked before any work (one function for every command).

`check_output(path, flag, file=False, expect=...)` refuses, with one line naming the flag:
a directory output that exists as a file; a file output that is (or ends like) a directory; a
path under an existing file; a location whose nearest existing folder is not writable.
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxvalues.errors import ConfigError


def check_output(path, flag: str = "--out", *, file: bool = False, expect: str | None = None,
                 error=ConfigError) -> Path:
    p = Path(path).expanduser()
    want = f"; expected {expect}" if expect else ""
    if file and (str(path).endswith(("/", "\\")) or p.is_dir()):
        raise error(f"{flag} {path}: is a directory{want}")
    if not file and p.exists() and not p.is_dir():
        raise error(f"{flag} {path}: exists and is not a directory (is an existing file){want}")
    for parent in ((p,) if not file else ()) + tuple(p.absolute().parents):
        if parent.exists():
            if not parent.is_dir():
                raise error(f"{flag} {path}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise error(f"{flag} {path}: {parent} is not writable")
            break
    return p
