"""Fault injection at the named steps of the commit protocol, for the crash tests.

Stages of a commit, in order: "staged" (new files fsynced), "linked" (kept files linked into the
new version folder), "renamed" (after each new file moved in), "manifest_staged" (manifest and
folders fsynced), "manifest_replaced" (`current` renamed: committed), "old_deleted" (after each old
version folder deleted). Converting a pack of another layout (`PackWriter.open_append`) passes
"migrate_linked", "migrate_published", and "migrate_swapped" after each top-level link (where no
atomic exchange exists, "migrate_moved_aside" between a folder's move and its link's).

The crash tests replace `checkpoint` in-process, or set ESPER_FAULT_KILL="STAGE:N" in a child's
environment: the process then SIGKILLs itself the N-th time it reaches STAGE. Unset (always,
outside those tests), a checkpoint is one comparison. The protocol's modules call it through this
module (`faults.checkpoint(...)`), so a replacement takes effect everywhere.
"""

from __future__ import annotations

import os
import signal

_FAULT_KILL = os.environ.get("ESPER_FAULT_KILL")  # read once, at import
_seen: dict[str, int] = {}


def checkpoint(stage: str) -> None:
    """A named step of the commit protocol has been reached (see the module docstring)."""
    if _FAULT_KILL is not None:
        _seen[stage] = _seen.get(stage, 0) + 1
        if _FAULT_KILL == f"{stage}:{_seen[stage]}":
            os.kill(os.getpid(), signal.SIGKILL)


def no_checkpoint(stage: str) -> None:
    """For protocol steps that must not count as the stages above (a migration's own publish)."""
