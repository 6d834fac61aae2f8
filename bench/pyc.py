"""Byte-compile the engine before a timed run, as ``pip install`` does when it installs it.

With PYTHONDONTWRITEBYTECODE set (this lab host, some CI hosts) a checkout's modules would
otherwise be compiled from source again by every process a benchmark starts: about 30 ms of
start-up that no installed copy pays. Python still reads byte code with that variable set.
"""

from __future__ import annotations

import compileall
from pathlib import Path


def compile_engine() -> bool:
    """Byte-compile the ``mcast`` package where it is imported from; True if it all compiled."""
    import mcast  # here: a caller timing imports must not find it imported at module load

    return bool(compileall.compile_dir(Path(mcast.__file__).parent, quiet=1))
