"""End to end: the ViT and GPT smoke configs train, evaluate, checkpoint, resume."""

import pathlib

import pytest

from mha_jax.train import train_and_evaluate

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name, dtype", [("vit_cifar", "float32"),
                                         ("gpt2_wikitext103", "bfloat16")])
def test_smoke_trains_checkpoints_and_resumes(name, dtype, tmp_path, helpers):
  config = helpers.smoke_config(name, **{"model.attention.kind": "hopfield",
                                         "model.dtype": dtype})
  final = train_and_evaluate(config, str(tmp_path))

  losses = [row["loss"] for row in helpers.read_metrics(tmp_path, "train")]
  assert min(losses[1:]) < losses[0] - 0.1, losses
  eval_losses = [row["loss"] for row in helpers.read_metrics(tmp_path, "eval")]
  assert eval_losses[-1] < eval_losses[0], eval_losses
  assert {"loss", "accuracy"} <= set(final)
  assert ("perplexity" in final) == (name == "gpt2_wikitext103")
  assert [row["step"] for row in helpers.read_metrics(tmp_path, "eval")] == [10, 20]
  assert helpers.checkpoint_steps(tmp_path) == [10, 20]
  assert (tmp_path / "config.json").exists()
  assert list(pathlib.Path(tmp_path, "tb").glob("events.out.tfevents.*"))

  config.total_steps = 25   # a second call resumes from step 20
  train_and_evaluate(config, str(tmp_path))
  assert [row["step"] for row in helpers.read_metrics(tmp_path, "train")][-1] == 25
  assert helpers.checkpoint_steps(tmp_path)[-1] == 25
