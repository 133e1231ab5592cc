"""Named crash points, so that the crash-recovery tests kill a run exactly where it hurts.

With `ROUTELLM_BATCH_CRASH_AT=<glob>[#<n>]` in the environment, the n-th pass (default: the
first) through a `crash_point(name)` whose name matches the glob SIGKILLs this process: no
cleanup, no finally blocks, as a lost machine. Without the variable (always, outside the tests)
a crash point is one environment lookup.

The points (each placed where a crash leaves the most to recover):
- `upload.returned`: the provider stored the shard's input file; the ledger does not know its id.
- `create.answered`: the provider accepted a batch create; the ledger does not hold its id yet.
- `ledger.write:<file name>`: an atomic ledger write has its temp file written, not yet renamed
  (`ledger.write:strong-a1-00000-*.json#4`: the 4th write of that shard's record).
- `results.download`: part of a batch's results has been read and handed on; the rest has not.

Light module: standard library only.
"""

from __future__ import annotations

import fnmatch
import os
import signal
from collections import Counter

__all__ = ["ENV", "crash_point"]

ENV = "ROUTELLM_BATCH_CRASH_AT"
_passes: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """SIGKILL this process if `ROUTELLM_BATCH_CRASH_AT` names this point and pass."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition("#")
    if not fnmatch.fnmatchcase(name, target):
        return
    _passes[target] += 1
    if _passes[target] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
