"""Deliberate stops: the build halts, resumably, because going on would break a promise (another build holds
the output, an endpoint is down, too many requests were quarantined). The message says why and what to do;
the CLI prints it in one line, without a traceback. And warnings that change what a user should do (a lock
taken over, an output a lock cannot guard, files skipped): ``--quiet`` silences libraries, never these."""

from __future__ import annotations

import os
import socket


class BuildStopped(RuntimeError):
    """The build stopped on purpose; re-running the same command resumes it once the cause is fixed."""


class BuildWarning(UserWarning):
    """Something the user should act on; shown with ``--quiet`` too."""


def gone_here(host: str, pid: int) -> bool:
    """True when ``host`` is this machine and process ``pid`` no longer runs on it (a ``kill -9``d build): what it
    held (the output's lock, reply-cache claims) can be taken at once. Another host's process cannot be asked."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
