"""MHA / RealFormer exports run in transformers as custom code (issue 12 item 1):
same logits as mha_jax, greedy `generate()` (KV cache) equal to a full-recompute
greedy loop in mha_jax, exact reload into mha_jax; clear errors for bad loads.
Odd size: 3 layers, 5 heads, width 80, vocabulary 503."""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mha_jax import interop, models
from mha_jax.interop import common

SIZE = dict(num_layers=3, num_heads=5, width=80, mlp_dim=88)
FAMILY_OPTIONS = {"gpt2": dict(vocab_size=503, max_len=32),
                  "llama": dict(vocab_size=503, max_len=32),
                  "vit": dict(num_classes=7, image_size=20, patch_size=5)}
ATTENTIONS = {"mha_zeros": dict(kind="hopfield", alpha=0.6, alpha_hidden=0.3, h0="zeros",
                                reset_every=2),
              "mha_first_scores": dict(kind="hopfield", alpha=0.6, alpha_hidden=0.3,
                                       h0="first_scores", reset_every=2),
              "realformer": dict(kind="realformer"),
              # The stock classes scale by 1/√head_dim whatever config.json says (issue 24 §2:
              # a plain export was off by 0.032 in the logits).
              "standard_scaled": dict(kind="standard", score_scale=0.3)}
PROMPT, NEW_TOKENS = 4, 8  # the test sequences are PROMPT + NEW_TOKENS long: one jit


def inputs(family):
  rng = np.random.RandomState(0)
  if family == "vit":
    return rng.randn(2, 20, 20, 3).astype(np.float32)
  return rng.randint(0, 503, (2, PROMPT + NEW_TOKENS))


def random_params(model, x):
  """Random weights far from init, so greedy tokens vary (NumPy: no init compile)."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x))["params"])
  rng = np.random.RandomState(1)

  def draw(path, struct):
    name = jax.tree_util.keystr(path)
    noise = rng.randn(*struct.shape).astype(np.float32)
    return 1 + 0.2 * noise if "scale" in name else (0.1 if "bias" in name else 0.3) * noise
  return jax.tree_util.tree_map_with_path(draw, shapes)


def export(family, attention, directory):
  model = models.build_model(family, **SIZE, **FAMILY_OPTIONS[family], attention=attention)
  x = inputs(family)
  params = random_params(model, x)
  interop.export_pretrained(params, model, directory)
  return model, params, x


def greedy_full_recompute(apply, prompt_BxP, steps):
  """mha_jax greedy decoding, every step a full forward over a fixed buffer (causal:
  position t sees only tokens ≤ t, so the zeros after it do not matter)."""
  tokens = np.zeros((prompt_BxP.shape[0], prompt_BxP.shape[1] + steps), np.int64)
  tokens[:, :prompt_BxP.shape[1]] = prompt_BxP
  for t in range(prompt_BxP.shape[1], tokens.shape[1]):
    tokens[:, t] = np.asarray(apply(jnp.asarray(tokens))[:, t - 1]).argmax(-1)
  return tokens


@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
@pytest.mark.parametrize("family", ["gpt2", "llama", "vit"])
def test_custom_code_round_trip(family, attention, tmp_path):
  model, params, x = export(family, ATTENTIONS[attention], str(tmp_path))
  with open(tmp_path / "config.json") as f:
    assert f"mha_{family}" == json.load(f)["model_type"]
  auto = (transformers.AutoModelForImageClassification if family == "vit"
          else transformers.AutoModelForCausalLM)
  hf = auto.from_pretrained(str(tmp_path), trust_remote_code=True).eval()
  assert type(hf).__name__.startswith("Mha")

  apply = jax.jit(lambda inputs: model.apply({"params": params}, inputs)[0])
  ours = np.asarray(apply(jnp.asarray(x)))
  with torch.no_grad():
    theirs = hf(torch.as_tensor(x.transpose(0, 3, 1, 2) if family == "vit" else x)).logits
  assert np.abs(ours - theirs.numpy()).max() <= 1e-4

  if family != "vit":
    generated = hf.generate(torch.as_tensor(x[:, :PROMPT]), max_new_tokens=NEW_TOKENS,
                            min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True)
    expected = greedy_full_recompute(apply, x[:, :PROMPT], NEW_TOKENS)
    np.testing.assert_array_equal(generated.numpy(), expected)
    assert len(set(expected[:, PROMPT:].ravel())) > 2  # not a degenerate repeat

  reloaded = interop.model_from_pretrained(str(tmp_path))
  assert reloaded.stack.attention == model.stack.attention
  back = common.flatten(interop.load_pretrained(str(tmp_path), reloaded))
  for path, value in common.flatten(params).items():
    np.testing.assert_array_equal(back[path], value, err_msg=path)


@pytest.mark.parametrize("attention", ["mha_zeros", "standard_scaled"])
def test_custom_code_changes_the_transformers_logits(attention, tmp_path):
  """The custom code is not the stock attention under another name."""
  _, _, x = export("gpt2", ATTENTIONS[attention], str(tmp_path / "mha"))
  mha = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "mha"),
                                                          trust_remote_code=True).eval()
  plain = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{
      k: v for k, v in mha.config.to_dict().items()
      if k in transformers.GPT2Config().to_dict() and k not in ("model_type", "architectures",
                                                               "auto_map")})).eval()
  plain.load_state_dict(mha.state_dict())
  with torch.no_grad():
    diff = (mha(torch.as_tensor(x)).logits - plain(torch.as_tensor(x)).logits).abs().max()
  assert diff > 1e-2


def test_standard_export_is_plain_hf(tmp_path):
  export("gpt2", dict(kind="standard"), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))
  assert type(model) is transformers.GPT2LMHeadModel


def test_needs_trust_remote_code(tmp_path):
  export("gpt2", ATTENTIONS["realformer"], str(tmp_path))
  with pytest.raises(ValueError, match="trust_remote_code=True"):
    transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), trust_remote_code=False)


def test_invalid_mha_field_fails_in_one_line(tmp_path):
  export("llama", ATTENTIONS["mha_zeros"], str(tmp_path))
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  config["mha_jax_attention"]["alpha_hidden"] = 2
  with open(tmp_path / "config.json", "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError) as info:
    transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), trust_remote_code=True)
  message = str(info.value)
  assert "mha_jax_attention.alpha_hidden=2" in message and "\n" not in message, message


def test_standalone_defaults_are_the_models():
  """The custom code (transformers only) and the PyTorch reference spell the attention
  defaults out again; a config.json or a reference built without a field must get
  the model's value (the residual default moved once: issue 22 §4)."""
  from mha_jax.interop.hf_code import configuration_mha
  from mha_jax.interop import torch_reference
  from mha_jax.models import stack_config
  model = dataclasses.asdict(stack_config.AttentionConfig())
  reference = dataclasses.asdict(torch_reference.Attention())
  for field in ("alpha", "alpha_hidden", "residual", "h0"):
    assert configuration_mha.DEFAULTS[field] == model[field] == reference[field], field


@pytest.mark.parametrize("attention", [dict(kind="rezero"), dict(kind="hopfield", h0="noise")])
def test_unexportable_attention_fails_in_one_line(attention, tmp_path):
  model = models.build_model("gpt2", **SIZE, **FAMILY_OPTIONS["gpt2"], attention=attention)
  params = random_params(model, inputs("gpt2"))
  with pytest.raises(ValueError, match="does not export to transformers"):
    interop.export_pretrained(params, model, str(tmp_path))
  assert not os.listdir(tmp_path)  # nothing half-written


@pytest.mark.parametrize("attention", [dict(kind="standard", score_scale=0.3),
                                       dict(kind="hopfield")])
def test_timm_refuses_what_timm_cannot_compute(attention, tmp_path):
  model = models.build_model("vit", **SIZE, **FAMILY_OPTIONS["vit"], attention=attention)
  params = random_params(model, inputs("vit"))
  with pytest.raises(ValueError, match="does not export to timm") as info:
    interop.export_pretrained(params, model, str(tmp_path), timm=True)
  assert "\n" not in str(info.value)
  assert not os.listdir(tmp_path)
