"""The workdir as one run's property: a lock held while training, the config that
made it (config.json), and a metrics file that stays one row per step.

Only the coordinator (process 0) touches these files; the other processes of a
multi-host job neither lock nor write.
"""

from __future__ import annotations

import datetime
import json
import os
import socket

from mha_jax.train.validation import ConfigError

LOCK = "lock.json"


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """`<workdir>/lock.json` = {pid, host, started} while a run trains there. A lock
  left by a dead process on this host is taken over; one held by a live process,
  or by another host (whose processes we cannot see), stops the run."""

  def __init__(self, workdir):
    self.path = os.path.join(workdir, LOCK)
    self.held = False

  def _create(self):
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)   # atomic: one winner
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(owner, f)

  def acquire(self):
    """Returns the stale owner that was taken over ({} if none)."""
    try:
      self._create()
      self.held = True
      return {}
    except FileExistsError:
      pass
    try:
      with open(self.path, encoding="utf-8") as f:
        owner = json.load(f)
    except (OSError, ValueError):
      owner = {}   # half-written by a process that died while creating it
    if owner and (owner.get("host") != socket.gethostname() or _alive(int(owner["pid"]))):
      raise ConfigError(
          f"workdir is in use by pid {owner['pid']} on {owner['host']} since "
          f"{owner['started']} ({self.path}); wait for it, or delete the lock file if that "
          f"process is gone")
    os.remove(self.path)
    self._create()   # a second taker loses here with FileExistsError → one line in main
    self.held = True
    return owner or {"pid": "?", "host": "?", "started": "?"}

  def release(self):
    if self.held:
      self.held = False
      os.remove(self.path)


def read_config(workdir):
  """The config.json that made this workdir (a dict), or None."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_config(config, workdir):
  _replace(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


def trim_metrics(workdir, last_step):
  """Drop metrics rows past `last_step`: a resume repeats those steps."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = [line for line in lines if _step(line) is not None and _step(line) <= last_step]
  if len(kept) != len(lines):
    _replace(path, "".join(kept))
  return len(lines) - len(kept)


def _step(line):
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None   # a row cut short by a killed process


def _replace(path, text):
  """Write-then-rename: a crash leaves the old file or the new one, never half."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)
