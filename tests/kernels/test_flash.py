"""implementation="flash" for standard attention: the stack equals the naive
einsum stack (values and gradients) on CPU, and its TPU branch (the one-slot
layer-wise Pallas kernel, interpret mode) equals jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import attention
from mha_jax.kernels import flash, layerwise
from mha_jax.models import layers, stack_config


def test_flash_stack_equals_naive_stack():
  x = jax.random.normal(jax.random.key(0), (2, 8, 16))
  mask = attention.causal_mask(8)

  def stack(implementation):
    cfg = stack_config.StackConfig(num_layers=2, width=16, num_heads=2, mlp_dim=32,
                                   attention=stack_config.AttentionConfig(
                                       implementation=implementation))
    return layers.LayerStack(cfg)

  params = stack("naive").init(jax.random.key(1), x, mask)

  def value_and_grad(implementation):
    loss = lambda p, x: jnp.sum(jnp.sin(stack(implementation).apply(p, x, mask)[0]))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

  flash, naive = value_and_grad("flash"), value_and_grad("naive")
  for a, b in zip(jax.tree.leaves(flash), jax.tree.leaves(naive)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_one_slot_kernel_is_dot_product_attention():
  keys = jax.random.split(jax.random.key(2), 3)
  q, k, v = (jax.random.normal(key, (2, 16, 2, 8)) for key in keys)
  valid_BxT = jnp.arange(16)[None] < jnp.array([[16], [9]])
  mask = attention.causal_mask(16) & attention.padding_mask(valid_BxT)
  got = layerwise.layerwise_attention(q[None], k[None], v, jnp.full((1,), 8 ** -0.5), mask=mask,
                                      block=8, interpret=True)
  want = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("masking", ["none", "padding", "causal"])
@pytest.mark.parametrize("backend", ["mosaic", "triton"])
def test_lengths_no_power_of_two_tile_divides_are_padded(masking, backend):
  """T = 13 (ViT's 197 in small): the kernels get 16 rows, the appended keys masked
  out; values and gradients equal dot-product attention on the 13 real rows. Before
  the padding, the Triton branch refused any such length (block_q=13), even while
  lowering for TPU, since platform_dependent traces every branch."""
  assert layerwise.padded_length(13, 8) == 16 and layerwise.padded_length(197, 256) == 256
  assert layerwise.padded_length(300, 256) == 512 and layerwise.padded_length(24, 8) == 24
  keys = jax.random.split(jax.random.key(3), 4)
  q, k, v, cotangent = (jax.random.normal(key, (2, 13, 2, 8)) for key in keys)
  mask = {"none": None, "causal": None,
          "padding": attention.padding_mask(jnp.arange(13)[None] < jnp.array([[13], [7]]))
          }[masking]
  causal = masking == "causal"

  def kernel(q, k, v):
    return layerwise.layerwise_attention(q[None], k[None], v, jnp.full((1,), 8 ** -0.5),
                                         mask=mask, causal=causal, block=8, interpret=True,
                                         backend=backend)

  def reference(q, k, v):
    full = attention.causal_mask(13) if causal else mask
    return jax.nn.dot_product_attention(q, k, v, mask=full, implementation="xla")

  (got, got_vjp), (want, want_vjp) = (jax.vjp(f, q, k, v) for f in (kernel, reference))
  assert got.shape == want.shape == (2, 13, 2, 8)
  np.testing.assert_allclose(got, want, atol=1e-5)
  for a, b in zip(got_vjp(cotangent), want_vjp(cotangent)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_causal_flag_means_the_same_on_every_branch():
  """flash_attention(causal=True) without a mask is causal on CPU's library branch too,
  as in the Pallas kernels (interpret mode): both equal the explicit causal mask."""
  keys = jax.random.split(jax.random.key(4), 3)
  q, k, v = (jax.random.normal(key, (2, 16, 2, 8)) for key in keys)
  want = jax.nn.dot_product_attention(q, k, v, mask=attention.causal_mask(16), implementation="xla")
  np.testing.assert_allclose(flash.flash_attention(q, k, v, causal=True), want, atol=1e-5)
  kernel = layerwise.layerwise_attention(q[None], k[None], v, jnp.full((1,), 8 ** -0.5),
                                         causal=True, block=8, interpret=True)
  np.testing.assert_allclose(kernel, want, atol=1e-5)
