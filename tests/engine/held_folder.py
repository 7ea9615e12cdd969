"""A run folder held by another live process, as a second launch into it would find it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOLDER = "import sys, time; from vismae import run_folder; run_folder.FolderLock(sys.argv[1]).acquire(); print('holding', flush=True); time.sleep(600)"


@contextlib.contextmanager
def held_by_another_process(folder: Path):
    """Yield the pid of a process that holds ``folder`` until the block ends."""
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=environment)
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
