"""The dataset table as the config sees it: defaults, overrides, and the tokenizer a
dataset name implies (issue 9, item 6)."""

import pathlib

import numpy as np
import pytest

from mha_jax import config_util, data
from mha_jax.data import datasets, offline, tokenizers

GPT2_SMOKE = pathlib.Path(__file__).parents[2] / "configs" / "gpt2_wikitext103.py"


def smoke_data_config(cache_dir, **changes):
  """config.data of the GPT-2 smoke config (Shakespeare characters), then `changes`
  as `--config.data.KEY=VALUE` flags would make them."""
  config = config_util.load_config(f"{GPT2_SMOKE}:smoke").data
  config.update(dict(cache_dir=cache_dir, **changes))
  return config


def first_sequence(config):
  input_ = data.build_input(config, split="validation", global_batch_size=1, train=False, seed=0,
                            process_index=0, process_count=1)
  return input_.info, next(input_)["inputs"][0]


def test_data_name_implies_its_tokenizer(cache_dir):
  config = smoke_data_config(cache_dir, name="shakespeare_bpe")
  info, inputs = first_sequence(config)
  # Independent: GPT-2 BPE of the first validation work, not its characters.
  (_, work), *_ = offline.shakespeare_works("validation", cache_dir)
  expected = tokenizers.gpt2_tokenizer(cache_dir).encode_batch([work])[0][:config.seq_len]
  assert info.vocab_size == 50257
  np.testing.assert_array_equal(inputs, expected)


@pytest.mark.parametrize("name, tokenizer, own", [("shakespeare_bpe", "char", "gpt2"),
                                                  ("shakespeare_char", "gpt2", "char")])
def test_a_tokenizer_the_dataset_does_not_use_fails_in_one_line(cache_dir, name, tokenizer, own):
  config = smoke_data_config(cache_dir, name=name, tokenizer=tokenizer)
  with pytest.raises(ValueError) as error:
    first_sequence(config)
  message = str(error.value)
  assert "\n" not in message
  assert f"data.tokenizer={tokenizer!r}" in message and f"data.name={name!r}" in message
  assert f"tokenised with {own!r}" in message


def test_the_datasets_own_tokenizer_may_be_named():
  config = data.default_data_config("shakespeare_char", tokenizer="char")
  assert datasets.tokenizer_name(config) == "char"


def test_defaults_come_from_the_row_and_unknown_fields_fail():
  with pytest.raises(ValueError, match=r"\['seq_len'\] do not exist for imagenet2012"):
    data.default_data_config("imagenet2012", seq_len=3)
  config = data.default_data_config("lm1b", seq_len=64)
  assert (config.train_split, config.eval_split, config.seq_len) == ("train", "test", 64)
  config = data.default_data_config("food101")
  assert (config.image_size, config.crop, config.eval_split) == (224, "random_resized_crop",
                                                                 "validation")
