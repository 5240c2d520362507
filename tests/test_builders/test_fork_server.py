"""The workers' fork server: it ends with the build, at once, and nowhere else changes how a process ends."""

import os
import subprocess
import sys
import textwrap

# A module the fork server preloads before ours: it says it was loaded (on stdout, left in the buffer) and, at
# exit, leaves a file. atexit runs last-registered first, so ours runs before its handler.
MARKER = """
import atexit
from pathlib import Path

print("marker preloaded")
atexit.register(lambda: Path(__file__).with_name("torn-down").touch())
"""

# A build's own process in miniature: it starts the fork server, with the marker before our preload, and ends.
# No child is forked: a child would inherit the server's unflushed buffer and print the marker itself.
SCRIPT = """
from builders.plane import distributor
distributor.PRELOAD = ["fork_server_marker", *distributor.PRELOAD]
distributor.warm_up()
"""


def test_the_fork_server_ends_without_its_teardown_and_keeps_its_output(tmp_path):
    """The run returns once every holder of its pipes has exited, the fork server last: by then its atexit
    handlers would have run. Ours left at once, before the marker's (no file), flushing what the server had
    printed (its stdout is a pipe, so block-buffered)."""
    (tmp_path / "fork_server_marker.py").write_text(MARKER)
    # on PYTHONPATH: the fork server is a fresh interpreter, and Python 3.11's ignores the caller's sys.path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    env.pop("PYTHONUNBUFFERED", None)  # so that the marker's line waits in the buffer
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "marker preloaded" in done.stdout  # the server ran the preload, and its output was flushed
    assert not (tmp_path / "torn-down").exists()  # the server skipped its interpreter's teardown


def test_importing_the_preload_elsewhere_leaves_the_exit_alone():
    """Only a fork server ends early: any other process that imports the preload keeps its exit status (a
    test run importing it must still fail when it fails) and runs its own exit handlers."""
    code = textwrap.dedent(
        """
        import atexit
        atexit.register(lambda: print("handlers ran"))
        import builders.plane.preload
        raise SystemExit(3)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "handlers ran" in done.stdout
