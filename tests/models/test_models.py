"""Presets (shapes, parameter counts), model-level scan/loop and causality, config errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax.models import build_model, gpt, llama, vit
from mha_jax.models.param_layout import stack_layer_params, unstack_layer_params

TINY = dict(num_layers=2, width=24, num_heads=3, mlp_dim=40)


def param_count(model, *inputs):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nn.unbox(shapes)))


def gpt2_closed_form(L, D, F, V=50257, P=1024):
  block = 2 * 2 * D + 4 * (D * D + D) + (D * F + F) + (F * D + D)
  return V * D + P * D + L * block + 2 * D


def vit_closed_form(L, D, F, patch=16, image=224, classes=1000):
  tokens = (image // patch) ** 2 + 1
  block = 2 * 2 * D + 4 * (D * D + D) + (D * F + F) + (F * D + D)
  return patch * patch * 3 * D + D + D + tokens * D + L * block + 2 * D + D * classes + classes


def llama_closed_form(L, D, F, V=32000):
  return 2 * V * D + L * (2 * D + 4 * D * D + 3 * D * F) + D


@pytest.mark.parametrize("variant,published_millions", [
    ("small", 124), ("medium", 355), ("large", 774), ("xl", 1558)])
def test_gpt2_presets(variant, published_millions):
  size = gpt.VARIANTS[variant]
  count = param_count(gpt.create(variant), jnp.zeros((1, 8), jnp.int32))
  assert count == gpt2_closed_form(size["num_layers"], size["width"], size["mlp_dim"])
  assert abs(count / 1e6 - published_millions) < 1.0
  if variant == "small":
    assert count == 124_439_808
    logits = jax.eval_shape(lambda: gpt.create(variant).init_with_output(
        jax.random.key(0), jnp.zeros((2, 1024), jnp.int32))[0][0])
    assert logits.shape == (2, 1024, 50257) and logits.dtype == jnp.float32


@pytest.mark.parametrize("variant,published_millions", [
    ("Ti", 5.7), ("S", 22.0), ("B", 86.6), ("L", 304.3)])
def test_vit_presets(variant, published_millions):
  size = vit.VARIANTS[variant]
  count = param_count(vit.create(f"{variant}/16"), jnp.zeros((1, 224, 224, 3)))
  assert count == vit_closed_form(size["num_layers"], size["width"], size["mlp_dim"])
  assert abs(count / 1e6 - published_millions) < 0.1
  if variant == "B":
    assert count == 86_567_656


@pytest.mark.parametrize("variant", sorted(llama.VARIANTS))
def test_llama_presets(variant):
  size = llama.VARIANTS[variant]
  count = param_count(llama.create(variant), jnp.zeros((1, 8), jnp.int32))
  assert count == llama_closed_form(size["num_layers"], size["width"], size["mlp_dim"])


def tiny_models(kind, scan_layers=True):
  settings = dict(alpha=0.6, alpha_hidden=0.6) if kind == "hopfield" else {}
  common = dict(TINY, attention=dict(kind=kind, **settings), scan_layers=scan_layers)
  return {
      "vit": (build_model("vit", "Ti/4", image_size=12, num_classes=7, **common),
              jax.random.normal(jax.random.key(0), (2, 12, 12, 3))),
      "gpt2": (build_model("gpt2", "small", vocab_size=29, max_len=16, **common),
               jax.random.randint(jax.random.key(0), (2, 11), 0, 29)),
      "llama": (build_model("llama", "60m", vocab_size=29, **common),
                jax.random.randint(jax.random.key(0), (2, 11), 0, 29)),
  }


@pytest.mark.parametrize("family,kind", [("vit", "hopfield"), ("gpt2", "hopfield"),
                                         ("llama", "hopfield"), ("gpt2", "attention_residuals"),
                                         ("vit", "denseformer"), ("llama", "hyper_connections")])
def test_scanned_and_looped_models_agree(family, kind):
  """The families wrap the stack in the same layout (both attention kinds under
  every remat policy: tests/models/test_layers.py); the rivals that carry a history
  of earlier outputs or residual streams give the same loss and gradients scanned and
  looped."""
  model_s, x = tiny_models(kind)[family]
  model_l, _ = tiny_models(kind, scan_layers=False)[family]
  params = nn.unbox(model_s.init(jax.random.key(1), x))["params"]

  def loss(model, params):
    logits, _ = model.apply({"params": params}, x)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  value_s, grad_s = jax.value_and_grad(lambda p: loss(model_s, p))(params)
  value_l, grad_l = jax.value_and_grad(lambda p: loss(model_l, p))(unstack_layer_params(params))
  np.testing.assert_allclose(value_s, value_l, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grad_s,
               stack_layer_params(grad_l))
  logits, inter = model_s.apply({"params": params}, x, return_intermediates=True)
  assert inter["residual"].shape[0] == TINY["num_layers"]
  if kind == "hopfield":
    assert inter["hidden_state"].shape[0] == TINY["num_layers"]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoders_are_causal_and_respect_padding(family):
  model, tokens = tiny_models("hopfield")[family]
  params = model.init(jax.random.key(1), tokens)
  t = 4
  changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 1) % 29)
  logits, _ = model.apply(params, tokens)
  logits_changed, _ = model.apply(params, changed)
  np.testing.assert_array_equal(logits[:, :t + 1], logits_changed[:, :t + 1])
  assert np.abs(np.asarray(logits[:, t + 1:] - logits_changed[:, t + 1:])).max() > 1e-4

  # Padding: with the first 3 tokens marked as padding, their values don't matter.
  valid = jnp.arange(tokens.shape[1])[None, :] >= 3
  padded = tokens.at[:, :3].set(0)
  a, _ = model.apply(params, tokens, padding_mask=jnp.broadcast_to(valid, tokens.shape))
  b, _ = model.apply(params, padded, padding_mask=jnp.broadcast_to(valid, tokens.shape))
  np.testing.assert_allclose(a[:, 3:], b[:, 3:], atol=1e-5)


def test_gpt2_ties_embeddings_and_scales_residual_init():
  model = gpt.create("small", num_layers=4, width=64, num_heads=4, mlp_dim=256, vocab_size=50)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]
  assert "lm_head" not in params
  layer = params["decoder"]["layers"]
  np.testing.assert_allclose(np.std(layer["mlp"]["fc1"]["kernel"]), 0.02, rtol=0.1)
  np.testing.assert_allclose(np.std(layer["mlp"]["fc2"]["kernel"]), 0.02 / np.sqrt(8), rtol=0.1)
  np.testing.assert_allclose(np.std(layer["attention"]["out"]["kernel"]), 0.02 / np.sqrt(8), rtol=0.1)


@pytest.mark.parametrize("options,message", [
    (dict(attention=dict(kind="hopfield", alpha=1.5)), "attention.alpha=1.5"),
    (dict(attention=dict(kind="hopfield", alpha_hidden=-0.1)), "attention.alpha_hidden=-0.1"),
    (dict(attention=dict(kind="flash")), "attention.kind='flash'"),
    (dict(attention=dict(residual="leaky")), "attention.residual='leaky'"),
    (dict(num_heads=5), "num_heads=5 does not divide width=768"),
    (dict(remat_policy="some"), "remat_policy='some'"),
    (dict(dtype="float8"), "dtype='float8'"),
    (dict(hidden=3), "unknown model option 'hidden'"),
    (dict(attention=dict(beta=1.0)), "unknown attention option 'beta'"),
])
def test_bad_config_raises_one_clear_error(options, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
    gpt.create("small", **options)


def test_bad_names_and_shapes_raise():
  with pytest.raises(ValueError, match="unknown GPT-2 variant 'huge'"):
    gpt.create("huge")
  with pytest.raises(ValueError, match="unknown model name 'bert'"):
    build_model("bert")
  with pytest.raises(ValueError, match="pool='mean'"):
    vit.create("Ti/16", pool="mean")
  model, _ = tiny_models("standard")["gpt2"]
  with pytest.raises(ValueError, match="sequence length 17 exceeds the position table max_len=16"):
    model.init(jax.random.key(0), jnp.zeros((1, 17), jnp.int32))
  model, _ = tiny_models("standard")["vit"]
  with pytest.raises(ValueError, match=r"images of size \(16, 16\).*image_size=12"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
