"""NNX modules of every family give the Linen model's outputs from the same weights;
what the bridge keeps (partitioning names, dropout streams) and what it refuses."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import meta

from mha_jax import nnx as mha_nnx
from mha_jax.models import param_layout
from mha_jax.train import sharding

HOPFIELD = {"kind": "hopfield", "alpha": 0.3, "alpha_hidden": 0.7}
CASES = [("gpt2", {"kind": kind}) for kind in ("standard", "realformer", "value_residual",
                                               "rezero")]
CASES += [(name, attention) for name in ("gpt2", "llama", "vit") for attention in (
    [HOPFIELD] if name == "gpt2" else [{"kind": "standard"}, HOPFIELD])]


def build(tiny, name, seed=0, **overrides):
  variant, opts = tiny.options(name, **overrides)
  return mha_nnx.build_model(name, variant, rngs=nnx.Rngs(seed), **opts)


def call_options(name):
  """Decoders: row 1 left-padded by 3, with the positions that padding gives."""
  if name == "vit":
    return {}
  valid = jnp.arange(8)[None] >= jnp.array([[0], [3]])
  return dict(padding_mask=valid, positions=jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0))


@pytest.mark.parametrize("name, attention", CASES)
def test_same_outputs_as_linen_from_the_same_weights(tiny, name, attention):
  module = build(tiny, name, attention=attention)
  linen = tiny.linen_model(name, attention=attention)
  x, kwargs = tiny.model_input(name), call_options(name)
  params = tiny.linen_params(linen, x)
  expected, expected_layers = linen.apply({"params": params}, x, return_intermediates=True,
                                          **kwargs)
  before, _ = module(x, **kwargs)
  assert np.abs(np.asarray(before - expected)).max() > 1e-2   # its own init differs
  assert mha_nnx.load_linen_params(module, params) is module
  logits, per_layer = module(x, return_intermediates=True, **kwargs)
  np.testing.assert_allclose(logits, expected, atol=1e-6, rtol=0)
  assert sorted(per_layer) == sorted(expected_layers)
  for key in per_layer:
    np.testing.assert_allclose(per_layer[key], expected_layers[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("module_scanned", [True, False])
def test_loads_the_other_layer_layout(tiny, module_scanned):
  # Loop layout (layers_i, as the PyTorch importers give) into a scanned module, and back.
  module = build(tiny, "llama", scan_layers=module_scanned, attention=HOPFIELD)
  linen = tiny.linen_model("llama", scan_layers=not module_scanned, attention=HOPFIELD)
  tokens = tiny.model_input("llama")
  params = tiny.linen_params(linen, tokens)
  mha_nnx.load_linen_params(module, params)
  # Scan and loop are compiled apart: equal to rounding, not bit for bit.
  np.testing.assert_allclose(module(tokens)[0], linen.apply({"params": params}, tokens)[0],
                             atol=1e-5, rtol=0)
  convert = (param_layout.stack_layer_params if module_scanned
             else param_layout.unstack_layer_params)
  loaded = nnx.to_pure_dict(nnx.state(module, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, loaded, convert(params))


def test_a_boxed_variables_dict_loads(tiny):
  module = build(tiny, "vit", attention=HOPFIELD)
  linen = tiny.linen_model("vit", attention=HOPFIELD)
  images = tiny.model_input("vit")
  boxed = jax.eval_shape(linen.init, jax.random.key(0), images)
  params = tiny.linen_params(linen, images)
  variables = {"params": meta.replace_boxed(boxed["params"], params)}
  assert any(isinstance(leaf, nn.LogicallyPartitioned) for leaf in jax.tree.leaves(
      variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)))
  mha_nnx.load_linen_params(module, variables)
  np.testing.assert_allclose(module(images)[0], linen.apply({"params": params}, images)[0],
                             atol=1e-6, rtol=0)


def test_partitioning_names_are_kept(tiny):
  module = build(tiny, "gpt2", attention=HOPFIELD)
  linen = tiny.linen_model("gpt2", attention=HOPFIELD)
  boxed = jax.eval_shape(linen.init, jax.random.key(0), tiny.model_input("gpt2"))["params"]
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
  expected = dict(jax.tree_util.tree_leaves_with_path(nn.get_partition_spec(boxed),
                                                      is_leaf=is_spec))
  specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(module, nnx.Param)))
  assert dict(jax.tree_util.tree_leaves_with_path(specs, is_leaf=is_spec)) == expected
  query = specs["decoder"]["layers"]["attention"]["query"]["kernel"]
  assert query == jax.sharding.PartitionSpec("layers", "embed", "heads", "kv")


def test_dropout_draws_from_the_module_streams(tiny):
  dropout = dict(dropout=0.2, attention_dropout=0.2, attention=HOPFIELD)
  module, linen = build(tiny, "gpt2", **dropout), tiny.linen_model("gpt2", **dropout)
  tokens = tiny.model_input("gpt2")
  params = tiny.linen_params(linen, tokens)
  mha_nnx.load_linen_params(module, params)
  key = jax.random.key(7)
  expected, _ = linen.apply({"params": params}, tokens, train=True, rngs={"dropout": key})
  np.testing.assert_allclose(module(tokens, train=True, rngs=key)[0], expected,
                             atol=1e-6, rtol=0)
  twin = nnx.clone(module)
  first, second = module(tokens, train=True)[0], module(tokens, train=True)[0]
  assert np.abs(np.asarray(first - second)).max() > 1e-2     # the stream advances
  np.testing.assert_array_equal(twin(tokens, train=True)[0], first)  # same state, same draws
  deterministic, _ = linen.apply({"params": params}, tokens)
  np.testing.assert_allclose(module(tokens)[0], deterministic, atol=1e-6, rtol=0)


def test_bad_params_and_arguments_are_one_value_error(tiny):
  module = build(tiny, "gpt2", attention=HOPFIELD)
  linen = tiny.linen_model("gpt2", attention=HOPFIELD)
  params = tiny.linen_params(linen, tiny.model_input("gpt2"))
  without_final_norm = {k: v for k, v in params.items() if k != "final_norm"}
  with pytest.raises(ValueError, match="missing final_norm/bias, final_norm/scale; not in"):
    mha_nnx.load_linen_params(module, without_final_norm)
  wider = tiny.linen_params(tiny.linen_model("gpt2", vocab_size=70), tiny.model_input("gpt2"))
  with pytest.raises(ValueError, match=r"token_embedding/embedding \(70, 32\) vs \(61, 32\)"):
    mha_nnx.load_linen_params(module, wider)
  with pytest.raises(ValueError, match=r"alpha_hidden=\[0.5, 1.5\] is outside \[0, 1\]"):
    mha_nnx.set_attention_overrides(module, alpha_hidden=[0.5, 1.5])
  with pytest.raises(ValueError, match="unknown attention override 'beta'"):
    mha_nnx.set_attention_overrides(module, beta=0.1)
  variant, opts = tiny.options("gpt2")
  with pytest.raises(ValueError, match="rngs=0 is not allowed; pass an nnx.Rngs"):
    mha_nnx.build_model("gpt2", variant, rngs=0, **opts)
  with pytest.raises(ValueError, match="unknown model name 'bert'"):
    mha_nnx.build_model("bert", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="kind is 'standard', which reads no α"):
    mha_nnx.set_attention_overrides(build(tiny, "gpt2"), alpha=0.1)


def test_sharded_module_keeps_its_shardings_when_loading(tiny):
  # The Params' logical names, mapped by the train package's rules onto 8 CPU devices.
  module = build(tiny, "gpt2", attention=HOPFIELD)
  linen = tiny.linen_model("gpt2", attention=HOPFIELD)
  tokens = tiny.model_input("gpt2", batch=8)
  params = tiny.linen_params(linen, tokens)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
  logical = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(module, nnx.Param)))
  shardings = jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec),
                           nn.logical_to_mesh(logical, sharding.DEFAULT_RULES), is_leaf=is_spec)
  state = nnx.state(module, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jax.device_put, nnx.to_pure_dict(state),
                                               shardings))
  nnx.update(module, state)
  mha_nnx.load_linen_params(module, jax.tree.map(np.asarray, params))
  loaded = nnx.to_pure_dict(nnx.state(module, nnx.Param))
  jax.tree.map(lambda leaf, want: assert_sharded(leaf, want), loaded, shardings)
  query = loaded["decoder"]["layers"]["attention"]["query"]["kernel"]
  assert query.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  with sharding.step_context(mesh, sharding.DEFAULT_RULES):
    logits = nnx.jit(lambda m, x: m(x)[0])(module, tokens)
  np.testing.assert_allclose(logits, linen.apply({"params": params}, tokens)[0],
                             atol=1e-5, rtol=0)


def assert_sharded(leaf, want):
  assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (leaf.sharding, want)
