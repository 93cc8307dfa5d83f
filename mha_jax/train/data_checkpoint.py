"""The train iterator's position in a checkpoint: one file per process, written by
grain's orbax handler (`<step>/data/process_<i>-of-<P>.json`), so every process
saves its own state and no process speaks for the others.

The data package's train position is global (the number of global batches drawn,
the same on every process and for any process count), so a checkpoint written
by P processes resumes on Q: a process without a file of its own takes the
position all P files agree on. Files that disagree cannot be mapped onto
another process count, and the restore stops with one line saying so.
"""

from __future__ import annotations

import json

import grain
import jax
from etils import epath

from mha_jax.train.validation import ConfigError


class IteratorState:
  """What grain's CheckpointHandler saves and restores: a JSON position."""

  def __init__(self, state=None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state, sort_keys=True).encode()

  def set_state(self, raw: bytes) -> None:
    self.state = json.loads(raw)

  def start_prefetch(self) -> None:
    """Called by the handler after a restore; the real iterator starts later."""


def handler():
  return grain.checkpoint.CheckpointHandler()


def save_args(data_state):
  return grain.checkpoint.CheckpointSave(IteratorState(data_state))


def _file(directory, index, count):
  return directory / f"process_{index}-of-{count}.json"


def restore(step_directory):
  """This process's position from `<step>/data`, or the common global position of
  a checkpoint written by another process count; None if the step has no data item."""
  directory = epath.Path(step_directory) / "data"
  own = _file(directory, jax.process_index(), jax.process_count())
  if own.exists():
    return json.loads(own.read_text())
  files = sorted(directory.glob("process_*-of-*.json")) if directory.exists() else []
  if not files:
    return None
  positions = {f.read_text() for f in files}
  writers = files[0].name.rsplit("-of-", 1)[1].removesuffix(".json")
  if len(positions) > 1:
    raise ConfigError(
        f"{step_directory} was written by {writers} processes whose data positions differ "
        f"({len(positions)} distinct); it resumes only on {writers} processes")
  return json.loads(positions.pop())
