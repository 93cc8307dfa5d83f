"""Command line: python -m mha_jax.main --config=configs/demo.py:attention=hopfield \
--workdir=runs/demo [--config.total_steps=100 ...]

Flags only; the work is `mha_jax.train.train_and_evaluate(config, workdir)`.
A configuration that cannot run, or a NaN loss, ends with one line and exit 1.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.json.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py:smoke.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here so that --help and flag errors return before JAX starts.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # orbax logs every file it writes at INFO
  from mha_jax.train import train
  from mha_jax.train.sharding import ConfigError
  try:
    train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  except (ConfigError, FloatingPointError) as e:
    sys.exit(f"error: {e}")


def run():
  """Console-script entry point (`mha-train`)."""
  app.run(main)


if __name__ == "__main__":
  run()
