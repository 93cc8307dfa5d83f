"""SIGTERM / SIGINT as a request, never as an exception inside native code.

The handler only records the signal. Setup checks it between phases and stops
with `Interrupted` (exit 130 / 143); the loop polls it after every step, saves a
checkpoint and returns. A second signal exits at once. Imports nothing heavy, so
`mha_jax.main` installs it before JAX loads: a Ctrl-C during start-up used to
raise KeyboardInterrupt inside an extension's import and end in a segfault.

In a multi-process job a signal may reach any subset of the processes (a
scheduler signals all of them, a user one), and a process that stopped alone
would leave the others waiting in a collective for ever. So once the job is
joined (`join`), every check and every poll is an all-gather of each process's
signal (`distributed.IntGather`): all processes see the same answer at the same
step, stop there together and name who got what. The per-step gather is read
one step late, so the host never waits for the step it has just dispatched.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def describe(signals, process_count):
  """'SIGTERM reached process 1 (of 2)'; 'SIGTERM reached processes 0, 1, SIGINT
  process 2 (of 3)'."""
  by_name = {}
  for process, name in sorted(signals.items()):
    by_name.setdefault(name, []).append(str(process))
  parts = [f"{name} {'reached ' if i == 0 else ''}process{'es' if len(ids) > 1 else ''} "
           f"{', '.join(ids)}" for i, (name, ids) in enumerate(by_name.items())]
  return ", ".join(parts) + f" (of {process_count})"


class Interrupted(Exception):
  """A signal arrived before the first training step; nothing was saved."""

  def __init__(self, signame, phase, reached=None):
    if reached is None:
      super().__init__(f"{signame} during {phase}: stopped before the first step, nothing saved")
    else:
      super().__init__(f"{reached} during {phase}: every process stopped before the first "
                       "step, nothing saved")
    self.exit_code = 128 + signal.Signals[signame].value


class Preemption:
  """Context manager; `requested` is the name of this process's first signal
  ('SIGTERM') or None."""

  def __init__(self):
    self.requested = None
    self._previous = {}
    self._peers = None     # a distributed.IntGather once a multi-process job is joined
    self._pending = None   # the gather started after the previous step

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

  def join(self, peers):
    """From now on decide with the other processes; `peers`: a distributed.IntGather
    (None: alone again)."""
    self._peers, self._pending = peers, None

  def _signal_number(self):
    return signal.Signals[self.requested].value if self.requested else 0

  def _gathered(self, handle):
    codes = self._peers.result(handle)[:, 0]
    return {i: signal.Signals(int(c)).name for i, c in enumerate(codes) if c}

  def check(self, phase):
    """Raise Interrupted if a signal arrived (at any process: in a multi-process job
    every process calls this at the same phase); `phase` names what was being done."""
    if self._peers is None:
      if self.requested is not None:
        raise Interrupted(self.requested, phase)
      return
    signals = self._gathered(self._peers.start([self._signal_number()]))
    if signals:
      raise Interrupted(self.requested or next(iter(signals.values())), phase,
                        describe(signals, self._peers.count))

  def poll(self):
    """After each training step: {process index: signal name} if the job stops at
    this step, else {}. Every process of a job gets the same answer."""
    if self._peers is None:
      return {0: self.requested} if self.requested else {}
    previous, self._pending = self._pending, self._peers.start([self._signal_number()])
    return self._gathered(previous) if previous is not None else {}

  def stop_message(self, signals, step):
    if self._peers is None:
      return f"{signals[0]} at step {step}: checkpoint saved, exiting"
    return (f"{describe(signals, self._peers.count)}: every process stopped at step {step}, "
            "checkpoint saved, exiting")

  def uninstall(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def __enter__(self):
    return self.install()

  def __exit__(self, *exc):
    self.uninstall()
