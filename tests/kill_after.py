"""Run a module as ``python -m`` would, and SIGKILL this process just before its k-th write into
a folder: the crash tests' way to stop a stage between two writes, with no hook in the stage.

usage: python tests/kill_after.py K FOLDER MODULE [ARGUMENT ...]

A write is a rename into FOLDER (``os.replace`` / ``os.rename``, which every atomic write in
sixfold ends with: a file's temporary copy, a registry entry's folder). The k-th one is not
made: the process kills itself with SIGKILL first, so everything before it is on disk and
nothing after it. A run with fewer than K writes ends as usual.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from collections.abc import Callable
from typing import Any

KILL_AT = int(sys.argv[1])
FOLDER = os.path.realpath(sys.argv[2])
MODULE = sys.argv[3]
writes = 0


def inside(path: Any) -> bool:
    target = os.path.realpath(os.fspath(path))
    return target == FOLDER or target.startswith(FOLDER + os.sep)


def counting(real: Callable[..., None]) -> Callable[..., None]:
    def rename(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        global writes
        if inside(target):
            writes += 1
            if writes == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)
        real(source, target, *args, **kwargs)

    return rename


os.replace = counting(os.replace)
os.rename = counting(os.rename)
sys.argv = [MODULE, *sys.argv[4:]]
sys.path[0] = os.getcwd()  # as `python -m` puts it, instead of this script's folder
runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
