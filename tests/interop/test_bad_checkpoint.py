"""A checkpoint that does not fit the model fails with one line naming the key and shapes."""

import json
import os
import re
import shutil

import pytest

from mha_jax import interop
from mha_jax.interop import checkpoint_io


def edited_copy(directory, tmp_path, edit_state_dict=None, edit_config=None):
  config, state_dict = checkpoint_io.read_checkpoint(directory)
  if edit_state_dict:
    edit_state_dict(state_dict)
  if edit_config:
    edit_config(config)
  out = str(tmp_path / "edited")
  checkpoint_io.write_checkpoint(out, config, state_dict)
  return out


def load_error(directory, model):
  with pytest.raises(ValueError) as info:
    interop.load_pretrained(directory, model)
  message = str(info.value)
  assert "\n" not in message
  return message


@pytest.fixture
def gpt2_model(hf_gpt2):
  return interop.model_from_pretrained(hf_gpt2[1])


def test_missing_key(hf_gpt2, gpt2_model, tmp_path):
  bad = edited_copy(hf_gpt2[1], tmp_path,
                    edit_state_dict=lambda sd: sd.pop("transformer.h.1.mlp.c_fc.bias"))
  message = load_error(bad, gpt2_model)
  assert "missing key 'transformer.h.1.mlp.c_fc.bias'" in message
  assert "decoder/layers_1/mlp/fc1/bias" in message


def test_wrong_shape(hf_gpt2, gpt2_model, tmp_path):
  def shrink(sd):
    sd["transformer.ln_f.weight"] = sd["transformer.ln_f.weight"][:39]
  message = load_error(edited_copy(hf_gpt2[1], tmp_path, edit_state_dict=shrink), gpt2_model)
  assert "'transformer.ln_f.weight'" in message
  assert "(39,)" in message and "(40,)" in message


def test_wrong_head_count(hf_gpt2, gpt2_model, tmp_path):
  """Same weights, config.json says 4 heads of 10: the model's 5 heads of 8 do not fit."""
  bad = edited_copy(hf_gpt2[1], tmp_path, edit_config=lambda c: c.update(n_head=4))
  message = load_error(bad, gpt2_model)
  assert re.search(r"key 'transformer\.h\.0\.attn\.c_attn\.(weight|bias)' gives "
                   r"decoder/layers_0/attention/\w+/\w+ shape \((40, )?4, 10\), "
                   r"the model expects \((40, )?5, 8\)$", message), message


def test_model_with_other_head_count(hf_gpt2):
  model = interop.model_from_pretrained(hf_gpt2[1], num_heads=4)
  message = load_error(hf_gpt2[1], model)
  assert re.search(r"'transformer\.h\.0\.attn\.c_attn\.(weight|bias)' .* shape "
                   r"\((40, )?5, 8\), the model expects \((40, )?4, 10\)$", message), message


def test_checkpoint_deeper_than_model(hf_gpt2):
  model = interop.model_from_pretrained(hf_gpt2[1], num_layers=2)
  message = load_error(hf_gpt2[1], model)
  assert "'transformer.h.2." in message and "decoder/layers_2/" in message


def test_no_weights_file(tmp_path, gpt2_model):
  shutil.copy(os.devnull, tmp_path / "config.json")
  with pytest.raises(FileNotFoundError, match="expected one weights file"):
    interop.load_pretrained(str(tmp_path), gpt2_model)


def test_unsupported_config_is_one_line(hf_llama, tmp_path):
  bad = edited_copy(hf_llama[1], tmp_path, edit_config=lambda c: c.update(num_key_value_heads=1))
  with pytest.raises(ValueError, match="grouped-query attention"):
    interop.model_options_from_pretrained(bad)
  with open(os.path.join(bad, "config.json")) as f:
    assert json.load(f)["num_key_value_heads"] == 1
