"""implementation="flash" for standard attention: the stack equals the naive
einsum stack (values and gradients) on CPU, and its TPU branch (the one-slot
layer-wise Pallas kernel, interpret mode) equals jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np

from mha_jax import attention
from mha_jax.kernels import layerwise
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
