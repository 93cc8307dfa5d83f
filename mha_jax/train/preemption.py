"""SIGTERM / SIGINT as a request, never as an exception inside native code.

The handler only records the signal. Setup checks it between phases and stops
with `Interrupted` (exit 130 / 143); the loop checks it after every step, saves a
checkpoint and returns. A second signal exits at once. Imports nothing heavy, so
`mha_jax.main` installs it before JAX loads: a Ctrl-C during start-up used to
raise KeyboardInterrupt inside an extension's import and end in a segfault.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
  """A signal arrived before the first training step; nothing was saved."""

  def __init__(self, signame, phase):
    super().__init__(f"{signame} during {phase}: stopped before the first step, nothing saved")
    self.exit_code = 128 + signal.Signals[signame].value


class Preemption:
  """Context manager; `requested` is the name of the first signal ('SIGTERM') or None."""

  def __init__(self):
    self.requested = None
    self._previous = {}

  def install(self):
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested is not None:   # asked twice: the user means it
      sys.stderr.write(f"{signal.Signals(signum).name} again: exiting now\n")
      sys.stderr.flush()
      os._exit(128 + signum)
    self.requested = signal.Signals(signum).name

  def check(self, phase):
    """Raise Interrupted if a signal arrived; `phase` names what was being done."""
    if self.requested is not None:
      raise Interrupted(self.requested, phase)

  def uninstall(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def __enter__(self):
    return self.install()

  def __exit__(self, *exc):
    self.uninstall()
