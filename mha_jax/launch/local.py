"""P processes × D simulated CPU devices on localhost: a multi-host job on one box.

Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
(read by `mha_jax.distributed`), JAX_PLATFORMS=cpu and
--xla_force_host_platform_device_count=D. Output lines are prefixed with the
process id. When one process fails, the others are stopped (SIGTERM, then
SIGKILL after `grace_s`) and its exit status is returned. SIGTERM / SIGINT to the
launcher is forwarded to every process (which save a checkpoint and exit), with
SIGKILL after `grace_s`; a second signal kills them at once.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from mha_jax import distributed

_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S+")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(index, processes, devices_per_process, port, base=None):
  env = dict(os.environ if base is None else base)
  flags = _DEVICE_COUNT_FLAG.sub("", env.get("XLA_FLAGS", "")).strip()
  env.update({
      distributed.ENV_COORDINATOR: f"127.0.0.1:{port}",
      distributed.ENV_NUM_PROCESSES: str(processes),
      distributed.ENV_PROCESS_ID: str(index),
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices_per_process}".strip(),
      "PYTHONUNBUFFERED": "1",
  })
  return env


def _pump(index, stream, out, lock):
  for line in iter(stream.readline, b""):
    with lock:
      out.write(f"[{index}] {line.decode(errors='replace')}")
      out.flush()


def _exit_status(returncode):
  return 128 - returncode if returncode < 0 else returncode   # killed by signal N → 128+N


def with_own_python(command):
  """`python ...` runs under the launcher's interpreter: the PATH's `python` may be
  another installation, without JAX or this package (a venv's python was used to
  start the launcher)."""
  if command and command[0] in ("python", "python3"):
    return [sys.executable, *command[1:]]
  return list(command)


class LocalJob:
  """The running processes; `wait()` returns the job's exit status.

  Each process runs in its own process group: a terminal's Ctrl-C (or a kill of the
  launcher's group) reaches the launcher only, which forwards it once; a process
  that got the signal twice would exit at once without its checkpoint."""

  def __init__(self, command, processes, devices_per_process, *, port=None, grace_s=10.0,
               out=None):
    if processes < 1 or devices_per_process < 1:
      raise ValueError(f"--processes={processes} and --devices_per_process="
                       f"{devices_per_process} must be >= 1")
    if not command:
      raise ValueError("no command given: python -m mha_jax.launch local ... -- <command ...>")
    self.grace_s, self.out = grace_s, out or sys.stdout
    self.deadline = None   # when stopping: the time of SIGKILL
    port = port or free_port()
    self.lock = threading.RLock()   # say() may run in a signal handler
    self.procs, self.pumps = [], []
    for i in range(processes):
      proc = subprocess.Popen(with_own_python(command), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, process_group=0,
                              env=process_env(i, processes, devices_per_process, port))
      pump = threading.Thread(target=_pump, args=(i, proc.stdout, self.out, self.lock),
                              daemon=True)
      pump.start()
      self.procs.append(proc)
      self.pumps.append(pump)

  def say(self, text):
    with self.lock:
      self.out.write(f"[launch] {text}\n")
      self.out.flush()

  def stop(self, sig=signal.SIGTERM):
    """Signal every live process once; `wait` SIGKILLs those alive after grace_s.
    Stopping again kills them now."""
    if self.deadline is not None:
      self.deadline = time.monotonic()
      return
    self.deadline = time.monotonic() + self.grace_s
    for proc in self.procs:
      if proc.poll() is None:
        proc.send_signal(sig)

  def _kill_the_rest(self):
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()

  def wait(self) -> int:
    """Until every process has ended; the status of the first that failed, else 0."""
    status = None
    while True:
      codes = [proc.poll() for proc in self.procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed and status is None:
        index, code = failed[0]
        status = _exit_status(code)
        if self.deadline is None:
          self.say(f"process {index} exited with status {code}; stopping the others")
          self.stop()
      if all(c is not None for c in codes):
        break
      if self.deadline is not None and time.monotonic() >= self.deadline:
        self.say(f"SIGKILL to the processes still running after {self.grace_s:g} s")
        self._kill_the_rest()
        continue   # their status, once more
      time.sleep(0.1)
    for pump in self.pumps:
      pump.join(timeout=5)
    return status or 0


def run(command, processes, devices_per_process, *, port=None, grace_s=10.0) -> int:
  """Runs the job to the end; SIGTERM/SIGINT to the launcher stop every process."""
  job = LocalJob(command, processes, devices_per_process, port=port, grace_s=grace_s)

  def forward(signum, frame):
    del frame
    name = signal.Signals(signum).name
    if job.deadline is None:
      job.say(f"{name}: forwarded to every process; SIGKILL after {job.grace_s:g} s")
    else:
      job.say(f"{name} again: SIGKILL to every process")
    job.stop(signal.Signals(signum))

  previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    return job.wait()
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
