"""Real multi-host jobs on this machine: JAX processes joined by jax.distributed
(gloo collectives between CPU devices), started by `python -m mha_jax.launch local`.

One chain (one test, so that pytest-xdist keeps it in one worker):
  A  1 process × 8 devices, in this process, 8 steps
  B  2 processes × 4 devices, 6 steps: every loss and the final params equal A's
     (≤ 1e-5), and each process read exactly its half of every global batch
  C  the same 2-process run, kill -9 of every process after the step-4 checkpoint,
     relaunched: ends with B's parameters (bitwise)
  E  B's 2-process checkpoint resumed by 1 process to step 8: equals A (≤ 1e-5)
Then peers that disagree (config, process count, local device count) or never
arrive stop with one line.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mha_jax import config_util, data
from mha_jax.launch import local
from mha_jax.train import train

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
HELPER = str(ROOT / "tests" / "scaleout" / "mp_train.py")
SPEC = f"{ROOT}/configs/gpt2_wikitext103.py:smoke"
# Constant learning rate after warm-up, so runs of 6 and 8 steps share steps 1..6.
OVERRIDES = {"total_steps": 6, "log_every": 1, "eval_every": 0, "checkpoint_every": 2,
             "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "optim.schedule": "constant",
             "progress_bar": False}


def flags(**changes):
  values = dict(OVERRIDES, **changes)
  return [f"--config={SPEC}"] + [f"--config.{k}={v}" for k, v in values.items()]


def config(**changes):
  config = config_util.load_config(SPEC)
  for key, value in dict(OVERRIDES, **changes).items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def job(workdir, processes=2, devices=4, record=None, stall_at=0, **changes):
  """argv of `launch local` running the helper (mha_jax.main + instruments)."""
  instruments = ([f"--record={record}"] if record else []) + (
      [f"--stall_at={stall_at}"] if stall_at else [])
  # The jobs of one test share a compilation cache (their workdirs are siblings).
  cache = pathlib.Path(workdir).parent / "compilation_cache"
  return [sys.executable, "-m", "mha_jax.launch", "local", f"--processes={processes}",
          f"--devices_per_process={devices}", "--grace_s=2", "--", sys.executable, HELPER,
          *instruments, "--", *flags(**changes), f"--config.compilation_cache_dir={cache}",
          f"--workdir={workdir}"]


def run(argv, timeout=900):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env,
                        timeout=timeout)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return done.stdout


def losses(workdir):
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def saved_params(path):
  """Params of a state item as numpy, whatever process count wrote them."""
  checkpointer = ocp.StandardCheckpointer()
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                        checkpointer.metadata(path).item_metadata,
                        is_leaf=lambda m: hasattr(m, "shape"))
  return jax.tree.map(np.asarray, checkpointer.restore(path, target)["params"])


def final_params(workdir):
  root = pathlib.Path(workdir) / "checkpoints"
  step = max(int(p.name) for p in root.iterdir() if p.name.isdigit())
  return step, saved_params(root / str(step) / "state")


def max_difference(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                           jax.tree.leaves(b)))


def train_here(workdir, record, monkeypatch, **changes):
  """1 process × 8 devices in this process, recording the host batches."""
  build = data.build_input
  seen = []

  def build_input(cfg, **kwargs):
    inner = build(cfg, **kwargs)
    if not kwargs["train"]:
      return inner

    class Recorded:
      info = inner.info

      def __iter__(self):
        return self

      def __next__(self):
        batch = next(inner)
        seen.append(np.asarray(batch["inputs"]))
        return batch

      get_state, set_state = inner.get_state, inner.set_state
    return Recorded()

  monkeypatch.setattr(data, "build_input", build_input)
  train.train_and_evaluate(config(**changes), str(workdir))
  record.extend(seen)


def kill_job(launcher):
  """kill -9 of every process of the job: the launcher's children run in process
  groups of their own (see launch/local.py), so each is killed by its pid."""
  children = pathlib.Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text()
  for pid in children.split():
    os.kill(int(pid), signal.SIGKILL)
  os.killpg(launcher.pid, signal.SIGKILL)
  launcher.wait()


def test_two_processes_equal_one_resume_after_kill_and_change_process_count(
    tmp_path, monkeypatch, capsys):
  one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
  batches_one = []
  train_here(one, batches_one, monkeypatch, total_steps=8)   # A
  run(job(two, record=tmp_path / "batches"))                   # B
  loss_1, loss_2 = losses(one), losses(two)
  loss_gap = max(abs(loss_1[s] - loss_2[s]) for s in range(1, 7))
  step_2, params_2 = final_params(two)
  param_gap = max_difference(saved_params(one / "checkpoints" / "6" / "state"), params_2)
  with capsys.disabled():
    print(f"\n2x4 vs 1x8: max |loss diff| over 6 steps {loss_gap:.2e}, "
          f"max |param diff| at step 6 {param_gap:.2e}")
  assert sorted(loss_2) == list(range(1, 7)) and step_2 == 6
  assert loss_gap <= 1e-5 and param_gap <= 1e-5
  for step in range(1, 7):   # each process read exactly its rows of the global batch
    halves = [np.load(tmp_path / "batches" / f"process_{p}" / f"{step}.npy") for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), batches_one[step - 1])
    assert halves[0].shape[0] == batches_one[step - 1].shape[0] // 2

  # C: kill -9 every process once the step-4 checkpoint is complete, then relaunch.
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  stalled = subprocess.Popen(job(killed, stall_at=5), cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 900
  while not (killed / "checkpoints" / "4").is_dir() and time.monotonic() < deadline:
    assert stalled.poll() is None, "the run ended before it could be killed"
    time.sleep(0.5)
  kill_job(stalled)
  assert (killed / "checkpoints" / "4").is_dir()
  assert not (killed / "checkpoints" / "6").exists()
  run(job(killed))
  _, params_resumed = final_params(killed)
  resume_gap = max_difference(params_resumed, params_2)
  with capsys.disabled():
    print(f"killed at step 4-5 and resumed vs uninterrupted (2x4): max |param diff| "
          f"{resume_gap:.2e}")
  assert resume_gap == 0.0   # bitwise

  # E: the 2-process checkpoint continues in 1 process (global data position).
  shutil.copytree(two, tmp_path / "continued")
  train_here(tmp_path / "continued", [], monkeypatch, total_steps=8)
  continued = losses(tmp_path / "continued")
  continued_gap = max(abs(continued[s] - loss_1[s]) for s in (7, 8))
  _, params_continued = final_params(tmp_path / "continued")
  _, params_1 = final_params(one)
  continued_param_gap = max_difference(params_continued, params_1)
  with capsys.disabled():
    print(f"2-process checkpoint continued in 1 process, steps 7-8 vs 1x8: max |loss diff| "
          f"{continued_gap:.2e}, max |param diff| {continued_param_gap:.2e}")
  assert continued_gap <= 1e-5 and continued_param_gap <= 1e-5


def start_process(index, declared, port, workdir, devices=4, **changes):
  env = local.process_env(index, declared, devices, port)
  env["PYTHONPATH"] = str(ROOT)
  return subprocess.Popen([sys.executable, HELPER, "--", *flags(**changes),
                           f"--workdir={workdir}"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_peers_with_another_config_process_or_device_count_stop_with_one_line(tmp_path):
  port_a, port_b, port_c = local.free_port(), local.free_port(), local.free_port()
  procs = [start_process(0, 2, port_a, tmp_path / "a"),
           start_process(1, 2, port_a, tmp_path / "a", seed=1),   # another config
           start_process(0, 2, port_b, tmp_path / "b"),
           start_process(1, 3, port_b, tmp_path / "b"),           # another process count
           start_process(0, 2, port_c, tmp_path / "c", devices=2),
           start_process(1, 2, port_c, tmp_path / "c", devices=1)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 1 for p in procs), outputs
  for text in outputs[:2]:
    assert "error: processes [1] run a different config than process 0" in text, text
  for text in outputs[2:4]:
    assert "error: processes were started with process counts [2, 3]" in text, text
  for text in outputs[4:]:   # issue 24: was a traceback
    assert text.splitlines()[-1] == ("error: processes 0..1 have [2, 1] local devices: every "
                                     "process must have the same number (a batch is split "
                                     "evenly across processes)"), text


def test_a_peer_that_never_starts_times_out_with_one_line(tmp_path):
  """At its deadline JAX aborts the process with a C++ stack (DEADLINE_EXCEEDED on
  RegisterTask, issue 24); one line comes first and ends the process."""
  start = time.monotonic()
  alone = start_process(0, 2, local.free_port(), tmp_path, distributed_timeout_s=5)
  text = alone.communicate(timeout=180)[0]
  assert alone.returncode == 1, text
  assert ("joining a multi-process job as process 0 of 2 at 127.0.0.1:" in text
          and "waiting up to 5 s for every process" in text), text
  assert re.fullmatch(r"error: not every process joined within 5 s \(process 0 of 2 at "
                      r"127\.0\.0\.1:\d+\): start all 2 processes with the same coordinator "
                      r"address, or raise --config\.distributed_timeout_s",
                      text.splitlines()[-1]), text
  assert "DEADLINE_EXCEEDED" not in text and "Traceback" not in text, text
  assert time.monotonic() - start < 150
