"""Command line: python -m mha_jax.main --config=configs/demo.py:attention=hopfield \
--workdir=runs/demo [--config.total_steps=100 ...] [--debug]

Flags only; the work is `mha_jax.train.train_and_evaluate(config, workdir)`.
Every expected failure (a bad flag, config argument or field, a missing config
file, an unwritable or full disk, a bad init_from or checkpoint, a non-finite
step) ends with one line on stderr and exit 1; `--debug` (or MHA_DEBUG=1) shows
the traceback. A signal before the first step exits 130 (SIGINT) / 143 (SIGTERM).
`--help` lists the flags, and a config's fields and `:arguments`.
"""

from __future__ import annotations

import errno
import glob
import importlib.util
import os
import re
import sys

# Only the standard library and this light module at import time: `run` installs
# the signal handlers first thing, before absl, the config file and JAX load
# (see preemption.py); everything else is imported inside the functions.
from mha_jax.train.preemption import Interrupted, Preemption

USAGE = ("usage: python -m mha_jax.main --config=configs/<name>.py[:key=value,...] "
         "--workdir=DIR [--config.field=value ...] [--debug]")
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")


WRITE_ERRORS = (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTDIR,
                errno.EEXIST, errno.EDQUOT)


class CommandLineError(Exception):
  """A flag or config problem found while parsing the command line."""


def define_flags(argv):
  from absl import flags
  from ml_collections import config_flags
  flag_values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.json.",
                      flag_values=flag_values)
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py:smoke.",
                                  lock_config=True, flag_values=flag_values, sys_argv=argv)
  flags.DEFINE_boolean("debug", False, "Show tracebacks instead of one-line errors.",
                       flag_values=flag_values)
  # Multi-host on clusters JAX does not detect (TPU pods, SLURM and JAX_* env need none).
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator.",
                      flag_values=flag_values)
  flags.DEFINE_integer("num_processes", None, "Processes in the job.", flag_values=flag_values)
  flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.",
                       flag_values=flag_values)
  return flag_values


def last_line(text):
  """The informative line of an absl/ml_collections message that embeds a traceback,
  without the exception's class name."""
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return re.sub(r"^\w+(Error|Exception): ", "", lines[-1]) if lines else type(text).__name__


def parse_command_line(argv):
  """(config, workdir, debug, cluster); CommandLineError with one line for anything
  wrong. `cluster`: the distributed.Cluster of the multi-host flags, or None."""
  from absl import flags
  from mha_jax import config_util
  try:
    argv, model_options = config_util.split_model_overrides(argv)
    flag_values = define_flags(argv)
    rest = flag_values(argv)
    config = flag_values.config
    if config is not None:
      config.keys()   # a config file that failed to load raises only when touched
      config_util.add_model_options(config, model_options)
  except (KeyError, AttributeError) as e:   # an override names no field of the config
    raise CommandLineError(config_util.unknown_field_message(argv) or last_line(e)) from e
  except (flags.Error, OSError, ValueError, TypeError) as e:
    raise CommandLineError(last_line(e).replace("Error whilst parsing config file:", "")) from e
  if len(rest) > 1:
    raise CommandLineError(f"unexpected arguments: {rest[1:]}")
  if config is None or not flag_values.workdir:
    raise CommandLineError(f"--config and --workdir are required; {USAGE}")
  from mha_jax import distributed
  explicit = (flag_values.coordinator_address, flag_values.num_processes, flag_values.process_id)
  cluster = distributed.resolve(*explicit) if any(v is not None for v in explicit) else None
  return config, flag_values.workdir, flag_values.debug, cluster


def _config_arguments(path):
  spec = importlib.util.spec_from_file_location("config_for_help", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return getattr(module, "ARGUMENTS", {})


def help_text(argv):
  """Usage, flags, and the config's fields (with --config) or every config's arguments."""
  lines = [USAGE, "", "flags:", "  --config=FILE[:key=value,...]  a config file and its arguments",
           "  --workdir=DIR   checkpoints, metrics.jsonl, config.json (a rerun resumes)",
           "  --config.FIELD=VALUE  override any field below (and any model option: "
           "--config.model.OPTION=VALUE)", "  --debug   tracebacks",
           "  --coordinator_address=HOST:PORT --num_processes=N --process_id=I   multi-host "
           "where JAX does not detect the cluster"]
  given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  if given:
    from mha_jax import config_util
    from mha_jax.train import validation
    path = given[0].partition(":")[0]
    lines += ["", f"{path} arguments (:key=value): "
              + ", ".join(f"{k}={v}" for k, v in _config_arguments(path).items()),
              "", f"fields of --config={given[0]}:"]
    config = config_util.load_config(given[0])
    flat = validation.flat_fields(config)
    lines += [f"  --config.{name}={value}" for name, value in sorted(flat.items())]
    unset = sorted(set(config_util.model_option_defaults()) - set(config.get("model", {})))
    lines += ["", "model options this config leaves to the model's defaults (settable too): "
              + ", ".join(f"--config.model.{name}" for name in unset)]
  else:
    lines += ["", "configs and their :arguments (add --config=FILE to --help for its fields):"]
    for path in sorted(glob.glob(os.path.join(CONFIGS_DIR, "*.py"))):
      arguments = _config_arguments(path)
      lines.append(f"  configs/{os.path.basename(path)}: "
                   + ", ".join(f"{k}={v}" for k, v in arguments.items()))
  return "\n".join(lines)


def describe_error(error):
  """One line for an expected failure, or None for a bug (which keeps its traceback)."""
  from mha_jax import distributed
  from mha_jax.train import checkpoint, loop, validation
  if isinstance(error, (CommandLineError, validation.ConfigError, loop.NonFiniteError,
                        checkpoint.CheckpointError, distributed.DistributedError)):
    return str(error).strip().splitlines()[0]
  seen = error
  while seen is not None:   # orbax wraps the OSError of a failed write in its own errors
    if isinstance(seen, OSError) and seen.errno in WRITE_ERRORS:
      where = f": {seen.filename}" if seen.filename else ""
      return f"cannot write{where}: {os.strerror(seen.errno)}"
    # tensorstore reports the OS error as text: `... "path" ... [os_error_code='28']`
    code = re.search(r"os_error_code='(\d+)'", str(seen))
    if code and int(code.group(1)) in WRITE_ERRORS:
      path = re.search(r'Failed writing: "([^"]+)"', str(seen))
      where = f": {path.group(1)}" if path else ""
      return f"cannot write{where}: {os.strerror(int(code.group(1)))}"
    seen = seen.__cause__ or seen.__context__
  return None


def main(argv, preemption=None):
  """Exit status of one command line (in-process: tests call it)."""
  if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
    print(help_text(argv[1:]))
    return 0
  debug = os.environ.get("MHA_DEBUG", "") not in ("", "0") or "--debug" in argv
  try:
    config, workdir, debug, cluster = parse_command_line(argv)
    debug = debug or os.environ.get("MHA_DEBUG", "") not in ("", "0")
    # Orbax logs every file it writes at INFO, and a failed save from each of its
    # threads at ERROR: the one line below says it once (--debug shows them).
    from absl import logging
    logging.set_verbosity(logging.WARNING if debug else logging.FATAL)
    if preemption is not None:
      preemption.check("start-up")
    from mha_jax.train import train
    train.train_and_evaluate(config, workdir, preemption, cluster)
  except Interrupted as e:
    print(f"interrupted: {e}", file=sys.stderr)
    return e.exit_code
  except Exception as e:  # noqa: BLE001 — expected failures become one line below
    line = None if debug else describe_error(e)
    if line is None:
      raise
    print(f"error: {line}", file=sys.stderr)
    return 1
  return 0


def run():
  """Console-script entry point (`mha-train`)."""
  preemption = Preemption().install()   # before the config file imports JAX
  from absl import flags
  flags.FLAGS.mark_as_parsed()   # absl logging reads the global flags; ours are our own
  status = main(sys.argv, preemption)
  sys.stdout.flush()
  sys.stderr.flush()
  if status:
    # After a failed save, orbax's background threads print tracebacks while the
    # interpreter shuts down; everything of ours is closed and flushed by now.
    os._exit(status)
  sys.exit(status)


if __name__ == "__main__":
  run()
