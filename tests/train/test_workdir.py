"""The workdir belongs to one run: a lock while it trains, the config that made
it, and one metrics row per step."""

import json
import os
import socket
import subprocess
import sys

import pytest

from mha_jax import config_util

from mha_jax.train import ConfigError, train_and_evaluate, validation, workdir


def write_lock(path, pid, host=None):
  (path / workdir.LOCK).write_text(json.dumps(
      {"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}))


def test_held_workdir_stops_a_second_run_at_once(tmp_path, helpers):
  # Issue 9 case 4: two runs in one workdir crashed at the first save or interleaved
  # their metrics. A live holder (another process) now stops the second at once.
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    write_lock(tmp_path, holder.pid)
    with pytest.raises(ConfigError, match=f"workdir is in use by pid {holder.pid} on "
                                          f"{socket.gethostname()} since 2026-01-01") as error:
      train_and_evaluate(helpers.smoke_config("gpt2_wikitext103"), str(tmp_path))
  finally:
    holder.kill()
    holder.wait()
  assert "\n" not in str(error.value)
  assert sorted(os.listdir(tmp_path)) == [workdir.LOCK]   # nothing else written
  assert json.loads((tmp_path / workdir.LOCK).read_text())["pid"] == holder.pid


def test_lock_of_another_host_is_respected(tmp_path):
  write_lock(tmp_path, 1, host="elsewhere")
  with pytest.raises(ConfigError, match="in use by pid 1 on elsewhere"):
    workdir.WorkdirLock(str(tmp_path)).acquire()


def test_stale_lock_of_a_dead_process_is_taken_over_and_released(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  write_lock(tmp_path, dead.pid)
  lock = workdir.WorkdirLock(str(tmp_path))
  assert lock.acquire()["pid"] == dead.pid
  assert json.loads((tmp_path / workdir.LOCK).read_text())["pid"] == os.getpid()
  with pytest.raises(ConfigError, match=f"in use by pid {os.getpid()}"):
    workdir.WorkdirLock(str(tmp_path)).acquire()   # we are alive: a second taker stops
  lock.release()
  assert not (tmp_path / workdir.LOCK).exists()


def test_changed_fields_ignore_cadence_and_name_the_rest():
  saved = config_util.load_config("configs/demo.py:attention=hopfield,smoke")
  current = config_util.load_config("configs/demo.py:attention=standard,smoke")
  current.update(total_steps=99, eval_every=3, log_every=7)
  current.optim.learning_rate = 0.5
  current.mesh.data = 2
  assert validation.changed_fields(saved.to_dict(), current) == [
      "model.attention.kind", "optim.learning_rate"]
  with pytest.raises(ConfigError, match=r"changed: model\.attention\.kind \('hopfield' → "
                                        r"'standard'\), optim\.learning_rate"):
    validation.check_same_run(json.loads(saved.to_json()), current, "runs/x")
  current.force_resume = True
  assert validation.check_same_run(saved.to_dict(), current, "runs/x") == [
      "model.attention.kind", "optim.learning_rate"]


def test_trim_metrics_keeps_rows_up_to_the_restored_step(tmp_path):
  rows = [{"step": s, "split": "train"} for s in (1, 2, 3, 4)] + [{"step": 2, "split": "eval"}]
  text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "spl'   # cut by a kill
  (tmp_path / "metrics.jsonl").write_text(text)
  assert workdir.trim_metrics(str(tmp_path), 2) == 3
  kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["split"]) for r in kept] == [(1, "train"), (2, "train"), (2, "eval")]
