"""One line instead of a traceback for the experiment scripts (absl apps).

`run(main)` is `absl.app.run(main)` where an expected failure — a bad flag value
(`ValueError` and its subclasses: ConfigError, CheckpointError), a missing file
(`OSError`), missing offline data, `app.UsageError` — ends in one stderr line
`error: ...` and exit status 1. `--debug` shows the traceback instead; anything
else (a bug) keeps its traceback. Library INFO logs (orbax writes ~30 lines per
restore) are hidden unless --debug or --verbosity is given.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


class ScriptError(ValueError):
  """A bad invocation found by a script; the message is one line."""


def define_debug_flag():
  """--debug, once per process (tests load several scripts into one)."""
  if "debug" not in FLAGS:
    flags.DEFINE_bool("debug", False, "show tracebacks instead of one-line errors")


def expected(error):
  """Whether `error` is a user's mistake (one line) rather than a bug (a traceback)."""
  from mha_jax.data import offline
  from mha_jax.train import checkpoint
  return isinstance(error, (ValueError, OSError, app.UsageError, offline.MissingDataError,
                            checkpoint.CheckpointError))


def one_line(error):
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def guarded(main):
  """`main` with expected failures turned into `error: ...` on stderr and exit 1."""
  def run_main(argv):
    if not FLAGS["verbosity"].present and not FLAGS.debug:
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except Exception as e:  # noqa: BLE001 — expected failures become one line below
      if FLAGS.debug or not expected(e):
        raise
      print(f"error: {one_line(e)}", file=sys.stderr)
      sys.exit(1)
  return run_main


def check_workdir(workdir, needs=("config.json",), flag="--workdirs"):
  """A training workdir that exists and holds `needs` (file or folder names)."""
  if not os.path.isdir(workdir):
    raise ScriptError(f"{flag}: {workdir} is not a directory")
  missing = [name for name in needs if not os.path.exists(os.path.join(workdir, name))]
  if missing:
    raise ScriptError(f"{flag}: {workdir} has no {' and no '.join(missing)}: not a training "
                      "workdir, or one that has not saved anything yet")
  return workdir


def run(main):
  define_debug_flag()
  app.run(guarded(main))
