"""Each MHA implementation trains the GPT smoke config on the 8 simulated devices
(data=2 × tensor=4: batch and heads both split, so the fused kernel runs per
shard inside shard_map) and follows the materialised run's training curve.

Tolerance: train losses agree to 1e-4 relative over the 20 steps (float32; the
implementations sum scores in a different order, and AdamW carries that along).
"""

import functools
import json
import pathlib

import numpy as np
import pytest

from mha_jax import config_util

from mha_jax.train import train_and_evaluate

pytestmark = pytest.mark.slow   # three short training runs
CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "gpt2_wikitext103.py"


@functools.cache
def train_losses(implementation, workdir):
  config = config_util.load_config(f"{CONFIG}:smoke")
  config.update(progress_bar=False, eval_every=0, checkpoint_every=0,
                mesh=dict(data=2, fsdp=1, tensor=4))
  config.model.attention.update(kind="hopfield", implementation=implementation)
  train_and_evaluate(config, workdir)
  rows = map(json.loads, (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines())
  return [row["loss"] for row in rows if row["split"] == "train"]


@pytest.mark.parametrize("implementation", ["factorized", "fused", "layerwise"])
def test_implementation_trains_sharded_like_naive(implementation, tmp_path_factory):
  reference = train_losses("naive", str(tmp_path_factory.getbasetemp() / "naive"))
  losses = train_losses(implementation, str(tmp_path_factory.mktemp(implementation)))
  assert min(losses[1:]) < losses[0] - 0.1, losses
  np.testing.assert_allclose(losses, reference, rtol=1e-4)
