"""Mesh shapes from `config.mesh`, and the README's mesh examples on 8 devices."""

import math
import pathlib
import re

import pytest

from mha_jax import config_util

from mha_jax.train import ConfigError, sharding

README = pathlib.Path(__file__).resolve().parents[2] / "mha_jax" / "train" / "README.md"


@pytest.mark.parametrize("mesh, shape", [
    (dict(data=-1), (8, 1, 1)), (dict(data=2, fsdp=-1), (2, 4, 1)),
    (dict(data=-1, tensor=2), (4, 1, 2))])
def test_mesh_fills_minus_one(mesh, shape):
  assert sharding.mesh_shape(mesh, 8) == shape


@pytest.mark.parametrize("mesh, message", [
    (dict(data=3), "needs 3 devices, 8 available"), (dict(data=-1, fsdp=-1), "at most one"),
    (dict(data=-1, tensor=3), "cannot fill 8 devices"), (dict(pipeline=2), "unknown axes")])
def test_bad_mesh_is_a_config_error(mesh, message):
  with pytest.raises(ConfigError, match=message):
    sharding.mesh_shape(mesh, 8)


def test_readme_mesh_examples_run_on_8_devices():
  # Issue 9 case 9: the README's `--config.mesh.fsdp=-1` failed ("at most one axis may be -1").
  text = README.read_text()
  examples = re.findall(r"((?:--config\.mesh\.\w+=-?\d+ ?)+)", text)
  assert examples
  for example in examples:
    mesh = dict(config_util.base_config().mesh)
    for key, value in re.findall(r"--config\.mesh\.(\w+)=(-?\d+)", example):
      mesh[key] = int(value)
    assert math.prod(sharding.mesh_shape(mesh, 8)) == 8, example
