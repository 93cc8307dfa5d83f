"""One training process of the multi-process tests: `python -m mha_jax.main ARGS`
with instruments a test needs and a user never does.

  python tests/scaleout/mp_train.py [--record=DIR] [--stall_at=N] [--signal=...] -- <flags>

--record=DIR  saves this process's host training batches (DIR/process_<i>/<n>.npy)
--stall_at=N  blocks forever when training batch N is drawn (the test kills -9)
--signal=SIG:TARGET:N[:P]  when batch N is drawn (by process P only, if given),
              sends SIG (SIGTERM, SIGINT) to TARGET: `self`, or `launcher`, the
              launcher's process group (what a terminal's Ctrl-C or a scheduler
              signals), then waits 3 s so that the signal lands before step N
"""

import os
import pathlib
import signal
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from mha_jax import data  # noqa: E402


class Instrumented:
  """A training Input whose batches are recorded and may stall."""

  def __init__(self, inner, record, stall_at, send=None):
    self.inner, self.info, self.record, self.stall_at, self.count = inner, inner.info, record, \
        stall_at, 0
    self.send = send

  def __iter__(self):
    return self

  def __next__(self):
    self.count += 1
    if self.count == self.stall_at:
      print(f"stalling at batch {self.count}", flush=True)
      while True:
        time.sleep(1)
    if self.send:
      self.send(self.count)
    batch = next(self.inner)
    if self.record:
      import jax
      directory = pathlib.Path(self.record) / f"process_{jax.process_index()}"
      directory.mkdir(parents=True, exist_ok=True)
      np.save(directory / f"{self.count}.npy", np.asarray(batch["inputs"]))
    return batch

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def signal_sender(spec):
  """send(batch number) of --signal=SIG:TARGET:N[:P], or None."""
  if not spec:
    return None
  name, target, at, *only = spec.split(":")
  this = int(os.environ.get("JAX_PROCESS_ID", "0"))

  def send(count):
    if count != int(at) or (only and int(only[0]) != this):
      return
    print(f"sending {name} to {target} at batch {count}, time {time.time():.3f}", flush=True)
    if target == "self":
      os.kill(os.getpid(), signal.Signals[name])
    else:
      os.killpg(os.getpgid(os.getppid()), signal.Signals[name])
    time.sleep(3)
  return send


def main(argv):
  split = argv.index("--")
  options = dict(a.lstrip("-").split("=", 1) for a in argv[1:split])
  record, stall_at = options.get("record"), int(options.get("stall_at", 0))
  send = signal_sender(options.get("signal"))
  build = data.build_input

  def build_input(config, **kwargs):
    inner = build(config, **kwargs)
    return Instrumented(inner, record, stall_at, send) if kwargs["train"] else inner

  data.build_input = build_input
  from mha_jax import main as entry
  return entry.main(["mha_jax.main"] + argv[split + 1:])


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.exit(main(sys.argv))
