"""Ctrl-C while the backfill waits between two batches: the first one must always stop
the job after its batch, never hang it.

The handler runs in the main thread between two bytecodes. When that moment falls
inside ``stop.wait(pause)`` while the event's own lock is held (entering or leaving the
wait), a handler that calls ``stop.set()`` waits for that lock forever: the command
hangs, and ``test_ctrl_c_stops_after_the_batch_and_a_rerun_resumes`` (test_cli.py)
failed once on its ``communicate(timeout=60)`` with nothing in its output. The window
is a few microseconds per batch; here it is made certain by holding the lock while
the signal arrives.
"""

from __future__ import annotations

import subprocess
import sys

from cowrieprocessor.settings import PROJECT_ROOT
from cowrieprocessor.testing.runners import child_env

PROBE = """
import signal
from cowrieprocessor.cli.common import ctrl_c_stops
with ctrl_c_stops() as stop:
    print("ready", flush=True)
    with stop._cond:  # where the walker's stop.wait() holds the event's lock
        signal.raise_signal(signal.SIGINT)
    print("stop set:", stop.wait(10), flush=True)
"""


def test_ctrl_c_inside_the_wait_between_batches_stops_the_job() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
        env=child_env(),
    )
    try:
        # one read of everything: a readline() first may buffer the later lines too,
        # which communicate() (reading the pipe itself) then never sees (a busy machine)
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the first Ctrl-C hung the command in its handler") from None
    assert stdout.startswith("ready"), stdout + stderr
    assert "stop set: True" in stdout, stderr
    assert "stopping after the current batch" in stderr
