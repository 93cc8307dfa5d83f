"""attention.implementation / hidden_window / hidden_dtype: validation, the `auto`
rule, and the model paths that need H (intermediates) on the factorised carry."""

import jax
import numpy as np
import pytest

from mha_jax import kernels
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
  assert kernels.resolve(att(implementation="auto"), 4, 64, 16) == "naive"
  assert kernels.resolve(att(implementation="auto"), 4, 65, 16) == "layerwise"
  assert kernels.resolve(att(implementation="auto", hidden_window=2), 4, 33, 16) == "layerwise"
  assert kernels.resolve(att(implementation="auto", h0="noise"), 4, 4096, 16) == "naive"
  assert kernels.resolve(att(implementation="fused"), 4, 8, 16) == "fused"


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
