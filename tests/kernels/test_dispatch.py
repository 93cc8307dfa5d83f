"""attention.implementation / hidden_window / hidden_dtype: validation, the `auto`
rule, the model paths that need H (intermediates) on the factorised carry, and
which kernel each backend gets (fused refused on GPU; factorised: cuDNN or XLA)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import kernels
from mha_jax.kernels import factorized, fused
from mha_jax.models import layers, stack_config


def att(**kw):
  return stack_config.AttentionConfig(kind="hopfield", **kw)


@pytest.mark.parametrize("kw,message", [
    (dict(kind="standard", implementation="factorized"), "implementation"),
    (dict(kind="hopfield", implementation="xla"), "implementation"),
    (dict(kind="hopfield", implementation="naive", hidden_window=2), "hidden_window=2"),
    (dict(kind="hopfield", implementation="factorized", hidden_window=-1), "hidden_window=-1"),
    (dict(kind="hopfield", implementation="naive", hidden_dtype="bfloat16"), "hidden_dtype"),
    (dict(kind="hopfield", implementation="fused", hidden_dtype="float16"), "float16"),
    (dict(kind="hopfield", implementation="factorized", h0="noise"), "noise"),
    (dict(kind="hopfield", implementation="layerwise", h0="noise"), "noise"),
    (dict(kind="hopfield", implementation="naive", hidden_window=3), "'layerwise'"),
])
def test_bad_implementation_options_name_the_value(kw, message):
  with pytest.raises(ValueError, match=message):
    stack_config.AttentionConfig(**kw)


def test_auto_picks_layerwise_when_the_features_are_smaller_than_h():
  # depth 4, head dim 16: the stacked features are 64 wide.
  assert kernels.resolve(att(implementation="auto"), 4, 1, 64, 1, 16) == "naive"
  assert kernels.resolve(att(implementation="auto"), 4, 1, 65, 1, 16) == "layerwise"
  assert kernels.resolve(att(implementation="auto", hidden_window=2), 4, 1, 33, 1, 16) == (
      "layerwise")
  assert kernels.resolve(att(implementation="auto", h0="noise"), 4, 1, 4096, 1, 16) == "naive"
  assert kernels.resolve(att(implementation="fused"), 4, 1, 8, 1, 16) == "fused"


def test_auto_picks_layerwise_when_the_saved_h_is_over_its_budget():
  # depth 4, batch 2, 3 heads, T = 64: H is 4·2·3·64²·4 = 393,216 bytes.
  saved_h = 4 * 2 * 3 * 64 * 64 * 4
  assert kernels.hidden_bytes_per_device(4, 2, 64, 3) == saved_h
  within = att(implementation="auto", hidden_budget_bytes=saved_h)
  over = att(implementation="auto", hidden_budget_bytes=saved_h - 1)
  assert kernels.resolve(within, 4, 2, 64, 3, 16) == "naive"
  choice, why = kernels.choose(over, 4, 2, 64, 3, 16)
  assert choice == "layerwise" and "budget" in why
  # Traced under an 8-device mesh, each device holds an eighth of it.
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  with jax.set_mesh(mesh):
    assert kernels.hidden_bytes_per_device(4, 2, 64, 3) == saved_h // 8
    assert kernels.resolve(att(implementation="auto", hidden_budget_bytes=saved_h // 8),
                           4, 2, 64, 3, 16) == "naive"


def test_hidden_budget_is_read_only_by_auto():
  with pytest.raises(ValueError, match="hidden_budget_bytes=1024 must be 0, or > 0 with "
                                       "implementation 'auto'"):
    att(implementation="naive", hidden_budget_bytes=1024)
  with pytest.raises(ValueError, match="hidden_budget_bytes=-1"):
    att(implementation="auto", hidden_budget_bytes=-1)


def test_kept_outputs_need_the_layerwise_path():
  with pytest.raises(ValueError, match="layerwise_keep_outputs=True needs implementation "
                                       "'layerwise' or 'auto', got 'factorized'"):
    att(implementation="factorized", layerwise_keep_outputs=True)
  assert att(implementation="auto", layerwise_keep_outputs=True).layerwise_keep_outputs


def test_factorized_stack_returns_the_hidden_state_on_request():
  """Intermediates build H_n from the carried features: equal to the naive stack's."""
  def stack(implementation):
    cfg = stack_config.StackConfig(num_layers=3, width=16, num_heads=2, mlp_dim=32,
                                   attention=att(implementation=implementation, reset_every=2))
    return layers.LayerStack(cfg)
  x = jax.random.normal(jax.random.key(0), (2, 8, 16))
  mask = layers.attention.causal_mask(8)
  params = stack("naive").init(jax.random.key(1), x, mask)
  out_naive, inter_naive = stack("naive").apply(params, x, mask, return_intermediates=True)
  out_fact, inter_fact = stack("factorized").apply(params, x, mask, return_intermediates=True)
  assert inter_fact["hidden_state"].shape == (3, 2, 2, 8, 8)
  np.testing.assert_allclose(inter_fact["hidden_state"], inter_naive["hidden_state"], atol=1e-5)
  np.testing.assert_allclose(out_fact, out_naive, atol=1e-5)
  carry = layers.initial_state(stack("factorized").cfg, 2, 8)
  assert set(carry) == {"query_stack", "key_stack"} and carry["key_stack"].shape == (2, 8, 2, 3, 8)


def test_fused_on_gpu_is_one_clear_error(monkeypatch):
  """The fused kernels are Mosaic-TPU calls: on a GPU backend the layer refuses,
  naming the backend and what runs there (interpret mode stays allowed)."""
  cfg = stack_config.StackConfig(num_layers=2, width=16, num_heads=2, mlp_dim=32,
                                 attention=att(implementation="fused"))
  x = jax.random.normal(jax.random.key(0), (1, 8, 16))
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(ValueError, match=r"backend 'gpu'.*\('naive', 'factorized', 'auto'\)"):
    layers.LayerStack(cfg).init(jax.random.key(1), x)
  q = x.reshape(1, 8, 2, 8)
  out, _ = fused.fused_hopfield_attention(q, q, q, None, alpha_hidden=0.5, interpret=True)
  assert out.shape == q.shape


@pytest.mark.parametrize("backend,dtype,width,lengths,masked,capability,expected", [
    ("gpu", "bfloat16", 64, (8, 8), True, (8, 0), "cudnn"),
    ("gpu", "float16", 128, (7, 7), False, (8, 0), "cudnn"),
    ("gpu", "bfloat16", 256, (8, 8), True, (9, 0), "cudnn"),
    ("gpu", "bfloat16", 256, (8, 8), True, (8, 6), "xla"),      # > 128 before Hopper
    ("gpu", "bfloat16", 768, (8, 8), True, (9, 0), "xla"),      # GPT-2 small, full depth
    ("gpu", "bfloat16", 60, (8, 8), True, (9, 0), "xla"),       # not a multiple of 8
    ("gpu", "bfloat16", 64, (7, 7), True, (9, 0), "xla"),       # mask → bias needs even T, S
    ("gpu", "float32", 64, (8, 8), True, (9, 0), "xla"),
    ("tpu", "bfloat16", 64, (8, 8), True, (0, 0), "xla"),
])
def test_factorized_attention_implementation_per_backend(backend, dtype, width, lengths, masked,
                                                         capability, expected):
  assert factorized.dot_product_implementation(backend, jnp.dtype(dtype), width, lengths, masked,
                                               capability) == expected


@pytest.mark.parametrize("backend,dtype,expected", [
    ("cpu", jnp.float32, "xla"), ("gpu", jnp.bfloat16, "cudnn"), ("gpu", jnp.float32, "xla")])
def test_factorized_library_path_names_its_implementation(monkeypatch, backend, dtype, expected):
  """The GPU/TPU branch passes an explicit implementation (jax's default is XLA on
  every backend) and computes the einsum path's numbers. cuDNN cannot run here: the
  recorder runs XLA in its place, so only the choice is checked for it."""
  calls, original = [], jax.nn.dot_product_attention

  def recorder(*args, implementation=None, **kw):
    calls.append(implementation)
    return original(*args, implementation="xla", **kw)

  monkeypatch.setattr(jax.nn, "dot_product_attention", recorder)
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  keys = jax.random.split(jax.random.key(0), 3)
  q_stack, k_stack = (jax.random.normal(k, (2, 8, 2, 2, 8), dtype) for k in keys[:2])
  v = jax.random.normal(keys[2], (2, 8, 2, 8), dtype)
  mask = layers.attention.causal_mask(8)
  out = factorized._library_attention(q_stack, k_stack, v, mask)
  assert calls == [expected]
  reference = factorized._einsum_attention(q_stack.astype(jnp.float32),
                                           k_stack.astype(jnp.float32),
                                           v.astype(jnp.float32), mask)
  tolerance = 1e-5 if dtype == jnp.float32 else 5e-2   # bf16: 8 significand bits
  np.testing.assert_allclose(np.asarray(out, np.float32), reference, atol=tolerance)
