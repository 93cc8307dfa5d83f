"""A checkpoint written by `python -m mha_jax.main` loads into the NNX model, which
then reproduces the eval loss the run logged at that step."""

import itertools
import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import pytest
from flax import nnx

from mha_jax import nnx as mha_nnx
from mha_jax.train import checkpoint, tasks
from mha_jax.train import train as train_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_main_checkpoint_reproduces_its_logged_eval_loss(tmp_path):
  workdir = tmp_path / "run"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one CPU device
  subprocess.run([sys.executable, "-m", "mha_jax.main",
                  f"--config={ROOT}/configs/gpt2_wikitext103.py:smoke,attention=hopfield",
                  f"--workdir={workdir}", "--config.total_steps=4", "--config.eval_every=4",
                  "--config.checkpoint_every=4"],
                 cwd=ROOT, env=env, check=True, capture_output=True, text=True)
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  logged_eval = next(row for row in logged if row["split"] == "eval" and row["step"] == 4)

  eval_input = train_lib.make_input(config, train=False)
  task = tasks.make_task(config, eval_input.info)
  options = {**task.model_defaults(), **config.model.to_dict()}
  name, variant = options.pop("name"), options.pop("variant")
  module = mha_nnx.build_model(name, variant, rngs=nnx.Rngs(0), **options)
  mha_nnx.load_linen_params(module, checkpoint.load_params(str(workdir)))

  loss_sum = weight_sum = 0.0
  for batch in itertools.islice(eval_input, config.eval_steps):
    x, kwargs = task.model_inputs(jax.tree.map(jax.numpy.asarray, batch))
    logits, _ = module(x, **kwargs)
    loss, _, weight = task.weighted_losses(logits, batch, train=False)
    loss_sum, weight_sum = loss_sum + float(loss.sum()), weight_sum + float(weight.sum())
  assert weight_sum > 0
  assert abs(loss_sum / weight_sum - logged_eval["loss"]) < 1e-5, (loss_sum / weight_sum,
                                                                   logged_eval)
