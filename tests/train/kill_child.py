"""Child process of test_reliability: trains configs/<name>.py:smoke with JSON
overrides and SIGKILLs itself when it draws training batch `kill_at`.

  python kill_child.py <config name> <workdir> <kill_at> '<json overrides>'
"""

import json
import os
import signal
import sys
import time

from mha_jax import config_util, data
from mha_jax.train import train


class KillingInput:
  def __init__(self, inner, kill_at):
    self.inner, self.info, self.kill_at, self.count = inner, inner.info, kill_at, 0

  def __iter__(self):
    return self

  def __next__(self):
    self.count += 1
    if self.count == self.kill_at:
      time.sleep(3)   # let the async save of the previous checkpoint finish
      os.kill(os.getpid(), signal.SIGKILL)
    return next(self.inner)

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def main(name, workdir, kill_at, overrides):
  configs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs")
  config = config_util.load_config(os.path.join(configs, f"{name}.py:smoke"))
  for key, value in json.loads(overrides).items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  build = data.build_input

  def build_input(data_config, **kwargs):
    inner = build(data_config, **kwargs)
    return KillingInput(inner, int(kill_at)) if kwargs["train"] else inner

  data.build_input = build_input
  train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  main(*sys.argv[1:])
