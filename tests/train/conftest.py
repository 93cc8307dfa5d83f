"""Helpers for the training tests: configs by path, and a hook on training batches."""

import json
import types
import pathlib

import pytest

from mha_jax import config_util, data

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def smoke_config(name, **overrides):
  """configs/<name>.py:smoke without a progress bar, with overrides ("a.b": v)."""
  config = config_util.load_config(f"{CONFIGS / name}.py:smoke")
  config.progress_bar = False
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def read_metrics(workdir, split):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [row for row in map(json.loads, lines) if row["split"] == split]


def checkpoint_steps(workdir):
  root = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


class HookedInput:
  """An Input whose n-th training batch (1-based) goes through hook(n, batch)."""

  def __init__(self, inner, hook):
    self.inner, self.hook, self.info, self.count = inner, hook, inner.info, 0

  def __iter__(self):
    return self

  def __next__(self):
    self.count += 1
    return self.hook(self.count, next(self.inner))

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


@pytest.fixture
def hook_train_batches(monkeypatch):
  """hook_train_batches(fn): training batches pass through fn(n, batch)."""
  def install(hook):
    build = data.build_input

    def build_input(config, **kwargs):
      inner = build(config, **kwargs)
      return HookedInput(inner, hook) if kwargs["train"] else inner

    monkeypatch.setattr(data, "build_input", build_input)
  return install


@pytest.fixture
def helpers():
  """The functions above, for test modules (conftest is not importable under
  --import-mode=importlib)."""
  return types.SimpleNamespace(smoke_config=smoke_config, read_metrics=read_metrics,
                               checkpoint_steps=checkpoint_steps, configs=CONFIGS)
