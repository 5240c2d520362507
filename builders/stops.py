"""Deliberate stops: the build halts, resumably, because going on would break a promise (another build holds
the output, an endpoint is down, too many requests were quarantined). The message says why and what to do;
the CLI prints it in one line, without a traceback."""

from __future__ import annotations


class BuildStopped(RuntimeError):
    """The build stopped on purpose; re-running the same command resumes it once the cause is fixed."""
