"""A training config pointed at a local HF GPT-2 directory fine-tunes it with MHA:
the loop starts from exactly the HF weights, and its checkpoint exports back to HF."""

import pathlib

import jax
import numpy as np
import pytest
import torch
import transformers

from mha_jax import config_util, interop
from mha_jax.interop import common
from mha_jax.models import param_layout
from mha_jax.train import checkpoint, train_and_evaluate

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def hf_gpt2_64(tmp_path_factory):
  """Long enough (64 positions) and wide enough in vocabulary for the smoke data."""
  config = transformers.GPT2Config(n_layer=2, n_embd=24, n_head=3, vocab_size=131,
                                   n_positions=64, bos_token_id=0, eos_token_id=0)
  torch.manual_seed(5)
  model = transformers.GPT2LMHeadModel(config)
  directory = str(tmp_path_factory.mktemp("gpt2_64"))
  model.save_pretrained(directory)
  return directory


@pytest.mark.slow
def test_training_config_init_from_hf_directory(hf_gpt2_64, tmp_path):
  config = config_util.load_config(f"{CONFIGS / 'gpt2_wikitext103.py'}:smoke")
  config.progress_bar = False
  config.model = interop.model_config_from_pretrained(
      hf_gpt2_64, attention=config_util.attention_config("hopfield", 0.5))
  config.init_from = hf_gpt2_64
  # Learning rate 0: the checkpoint must hold the HF weights, bit for bit.
  config.update(total_steps=2, eval_every=0, checkpoint_every=0, log_every=1)
  config.optim.update(learning_rate=0.0, warmup_steps=0, weight_decay=0.0)
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir)

  trained = jax.tree.map(np.asarray, checkpoint.load_params(workdir))
  model = interop.model_from_pretrained(hf_gpt2_64, attention=dict(config.model.attention))
  expected = interop.load_pretrained(hf_gpt2_64, model)
  flat_trained = common.flatten(param_layout.unstack_layer_params(trained))
  flat_expected = common.flatten(param_layout.unstack_layer_params(expected))
  assert sorted(flat_trained) == sorted(flat_expected)
  for path, value in flat_expected.items():
    np.testing.assert_array_equal(flat_trained[path], value, err_msg=path)

  exported = interop.export_pretrained(trained, model, str(tmp_path / "hf"))
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(exported).state_dict()
  original = transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2_64).state_dict()
  for key, value in original.items():
    assert torch.equal(reloaded[key], value), key
