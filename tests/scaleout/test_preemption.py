"""SIGTERM / SIGINT in a real 2-process job (`python -m mha_jax.launch local`):
wherever the signal lands (every process, the launcher, one process), every
process stops at the same step one step later, saves that step and exits 0, one
line names who got what, and the resumed run's losses equal an uninterrupted
run's. Before issue 24 a multi-process run ignored SIGTERM (JAX's preemption
notifier took the signal) and SIGINT to one process hung both.

Each interrupted run draws its batches from the start of that run: `batch 2` is
the run's second step. The signal lands before that step is dispatched (the
instrument waits 3 s), the processes learn of it from the all-gather after the
step, so they stop after the next one.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from mha_jax.train.preemption import Interrupted, Preemption

ROOT = pathlib.Path(__file__).resolve().parents[2]
HELPER = str(ROOT / "tests" / "scaleout" / "mp_train.py")
TOTAL = 14
FLAGS = [f"--config={ROOT}/configs/gpt2_wikitext103.py:smoke", f"--config.total_steps={TOTAL}",
         "--config.log_every=1", "--config.eval_every=0", "--config.checkpoint_every=0",
         "--config.mesh.data=2", "--config.progress_bar=False", "--config.model.dropout=0.1"]
TIMEOUT_S = 400   # a hang (the SIGINT case before the fix) fails here


def launch(workdir, signal_spec=None):
  """Runs the 2-process job (1 CPU device each); returns (exit status, output, the
  time the instrument sent its signal or None)."""
  instruments = [f"--signal={signal_spec}"] if signal_spec else []
  # Every launch of this worker shares one compilation cache (the runs' workdirs are
  # siblings): the later runs load the first one's programs, bitwise the same.
  cache = pathlib.Path(workdir).parent / "compilation_cache"
  argv = [sys.executable, "-m", "mha_jax.launch", "local", "--processes=2",
          "--devices_per_process=1", "--grace_s=60", "--", sys.executable, HELPER,
          *instruments, "--", *FLAGS, f"--config.compilation_cache_dir={cache}",
          f"--workdir={workdir}"]
  done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT_S,
                        env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True)
  sent = re.search(r"at batch \d+, time ([\d.]+)", done.stdout)
  return done.returncode, done.stdout + done.stderr, float(sent.group(1)) if sent else None


def losses(workdir):
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def checkpoints(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                if p.name.isdigit())


class ScriptedPeers:
  """A 2-process IntGather: this process is 0; process 1 sends peer[n] in gather n."""
  count = 2

  def __init__(self, peer):
    self.peer, self.sent = peer, []

  def start(self, values):
    self.sent.append(values[0])
    return len(self.sent) - 1

  def result(self, handle):
    return np.array([[self.sent[handle]], [self.peer.get(handle, 0)]])


def test_every_process_stops_on_the_gather_started_one_step_earlier():
  preemption = Preemption()
  preemption.join(ScriptedPeers({1: 2}))   # process 1 got SIGINT before gather 1 (step 2)
  assert [preemption.poll() for _ in range(2)] == [{}, {}]
  preemption.requested = "SIGTERM"          # this process, during step 3
  assert preemption.poll() == {1: "SIGINT"}
  assert preemption.poll() == {0: "SIGTERM"}
  assert preemption.stop_message({0: "SIGTERM", 1: "SIGINT"}, 3) == (
      "SIGTERM reached process 0, SIGINT process 1 (of 2): every process stopped at step 3, "
      "checkpoint saved, exiting")


def test_a_signal_to_a_peer_before_the_first_step_interrupts_this_process_too():
  preemption = Preemption()
  preemption.join(ScriptedPeers({0: 0, 1: 15}))
  preemption.check("state setup")
  with pytest.raises(Interrupted) as error:
    preemption.check("compilation")
  assert str(error.value) == ("SIGTERM reached process 1 (of 2) during compilation: every "
                              "process stopped before the first step, nothing saved")
  assert error.value.exit_code == 143


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  status, output, _ = launch(workdir)
  assert status == 0, output[-3000:]
  assert sorted(losses(workdir)) == list(range(1, TOTAL + 1))
  return losses(workdir)


def interrupt(workdir, signal_spec, expected_stop, expected_line):
  status, output, sent = launch(workdir, signal_spec)
  ended = time.time()
  assert status == 0, output[-3000:]
  assert re.search(rf"\[0\] {expected_line}: every process stopped at step {expected_stop}, "
                   "checkpoint saved, exiting", output), output[-3000:]
  assert checkpoints(workdir)[-1] == expected_stop
  assert max(losses(workdir)) == expected_stop
  assert ended - sent < 60, f"{ended - sent:.0f} s from the signal to the end of the job"
  return output


@pytest.mark.slow
def test_a_signal_anywhere_stops_every_process_at_one_step_and_resumes_exactly(tmp_path,
                                                                            uninterrupted):
  """One chain (one test: pytest-xdist keeps it and the fixture in one worker); each
  interrupted run but the first starts by resuming the previous one's checkpoint."""
  # What SLURM and Kubernetes do: every process gets SIGTERM.
  interrupt(tmp_path, "SIGTERM:self:2", 3, r"SIGTERM reached processes 0, 1 \(of 2\)")
  # To the launcher's process group: the launcher alone gets it and forwards it once.
  # Process 1 may have joined the deciding all-gather before its copy arrived.
  output = interrupt(tmp_path, "SIGTERM:launcher:2:0", 6,
                     r"SIGTERM reached process(es 0, 1| 0) \(of 2\)")
  assert "[launch] SIGTERM: forwarded to every process" in output
  # One process only: its peer learns it from the per-step all-gather. Before the
  # fix SIGTERM was ignored, and SIGINT to one process hung both.
  interrupt(tmp_path, "SIGTERM:self:2:1", 9, r"SIGTERM reached process 1 \(of 2\)")
  interrupt(tmp_path, "SIGINT:self:2:0", 12, r"SIGINT reached process 0 \(of 2\)")
  status, output, _ = launch(tmp_path)
  assert status == 0, output[-3000:]
  assert losses(tmp_path) == uninterrupted   # every step, bitwise
