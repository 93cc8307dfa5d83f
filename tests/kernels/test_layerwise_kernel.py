"""The layer-wise flash kernel (kernels/layerwise.py) against the materialised
computation softmax(mask(Σ_l w_l q_l k_lᵀ)) V in float64-free float32 jnp:
outputs and gradients with respect to every slot's q and k, v and the weights
(≤ 1e-5), in Pallas interpret mode with 8×8 tiles so the 16-token sequence
crosses tile borders both ways; causal block skipping, a dense mask on top, and
the Mosaic TPU lowering (compiled ahead of time with libtpu when installed).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import attention
from mha_jax.kernels import layerwise

W, B, T, N, D = 3, 2, 16, 2, 4
TOL = 1e-5


def inputs(seed=0, slots=W, length=T):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (slots, B, length, N, D))
  k = jax.random.normal(keys[1], (slots, B, length, N, D))
  v = jax.random.normal(keys[2], (B, length, N, D))
  w = jax.random.uniform(keys[3], (slots,), minval=0.1, maxval=0.6)
  return q, k, v, w


def reference(q, k, v, w, mask):
  """The materialised path: H = Σ_l w_l q_l k_lᵀ, then attention.masked_softmax."""
  h = jnp.einsum("l,lbtnd,lbsnd->bnts", w, q, k)
  return jnp.einsum("bnts,bsnd->btnd", attention.masked_softmax(h, mask), v)


def padded_causal_mask():
  valid_BxT = jnp.arange(T)[None] < jnp.array([[T], [11]])
  return attention.causal_mask(T) & attention.padding_mask(valid_BxT)


def value_and_grads(fn, args):
  def loss(*a):
    out = fn(*a)
    return jnp.sum(jnp.sin(out) * jnp.arange(out.size).reshape(out.shape) / out.size), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(*args)
  return out, grads


def assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=TOL, rtol=0)


@pytest.mark.parametrize("causal,dense", [(False, None), (False, "padded_causal"),
                                          (True, None), (True, "padded_causal")])
def test_kernel_equals_materialised_attention(causal, dense):
  args = inputs()
  mask = padded_causal_mask() if dense else None
  ref_mask = attention.causal_mask(T) if causal else None
  if mask is not None:
    ref_mask = mask if ref_mask is None else ref_mask & mask
  kernel = lambda q, k, v, w: layerwise.layerwise_attention(q, k, v, w, mask=mask,
                                                            causal=causal, block=8)
  assert_close(value_and_grads(kernel, args),
               value_and_grads(lambda *a: reference(*a, ref_mask), args))


@pytest.mark.parametrize("causal", [False, True])
def test_triton_schedule_equals_materialised_attention_in_interpret_mode(causal):
  """The GPU kernels' program logic (layerwise_triton.py), run on CPU; the Triton
  lowering itself needs a CUDA machine."""
  args, mask = inputs(), padded_causal_mask()
  ref_mask = mask
  kernel = lambda q, k, v, w: layerwise.layerwise_attention(
      q, k, v, w, mask=mask, causal=causal, block=8, interpret=True, backend="triton")
  assert_close(value_and_grads(kernel, args),
               value_and_grads(lambda *a: reference(*a, ref_mask), args))


def test_zero_weight_slots_contribute_nothing_and_get_zero_gradients():
  """A layer that has not run yet sits in the buffer with weight 0: its values
  must not leak into the output, its q/k gradients must be 0."""
  q, k, v, w = inputs(seed=1)
  w = w.at[2].set(0.0)
  kernel = lambda q, k, v, w: layerwise.layerwise_attention(q, k, v, w, causal=True, block=8)
  out, (dq, dk, _, dw) = value_and_grads(kernel, (q, k, v, w))
  out2, _ = value_and_grads(kernel, (q.at[2].set(7.0), k.at[2].set(-3.0), v, w))
  np.testing.assert_allclose(out, out2, atol=TOL)
  assert float(jnp.abs(dq[2]).max()) == 0.0 and float(jnp.abs(dk[2]).max()) == 0.0
  assert float(jnp.abs(dw[2])) > 0.0   # d/dw of a zero weight is not zero


def test_weight_gradient_matches_finite_differences():
  q, k, v, w = inputs(seed=2)
  loss = jax.jit(lambda w: jnp.sum(jnp.sin(layerwise.layerwise_attention(
      q, k, v, w, causal=True, block=8))))
  dw = jax.jit(jax.grad(loss))(w)
  eps = 1e-2
  for slot in range(W):
    step = jnp.zeros(W).at[slot].set(eps)
    fd = (loss(w + step) - loss(w - step)) / (2 * eps)
    np.testing.assert_allclose(dw[slot], fd, rtol=2e-3, atol=2e-3)


def test_bad_weights_and_causal_shapes_name_the_value():
  q, k, v, w = inputs()
  with pytest.raises(ValueError, match="weights shape"):
    layerwise.layerwise_attention(q, k, v, w[:2])
  with pytest.raises(ValueError, match="causal=True needs"):
    layerwise.layerwise_attention(q, k[:, :, :8], v[:, :8], w, causal=True, block=8)
  with pytest.raises(ValueError, match="block_q=12 is not a power of two"):
    layerwise.layerwise_attention(q[:, :, :12], k[:, :, :12], v[:, :12], w, block=12,
                                  interpret=True, backend="triton")


def test_triton_kernels_lower_for_cuda_without_a_gpu():
  """jax.export lowers the Pallas-Triton kernels to Triton IR for CUDA on this
  CPU host (PTX is made by XLA on a GPU, which these machines lack): the GPU
  branch of `on_platform` is traced, checked for Triton's power-of-two rules and
  lowered, forward and both backward kernels."""
  from jax import export
  q = jax.ShapeDtypeStruct((3, 2, 256, 2, 64), jnp.bfloat16)
  v = jax.ShapeDtypeStruct((2, 256, 2, 64), jnp.bfloat16)
  w = jax.ShapeDtypeStruct((3,), jnp.float32)
  loss = lambda q, k, v, w: jnp.sum(layerwise.layerwise_attention(
      q, k, v, w, causal=True, block=64).astype(jnp.float32))
  exported = export.export(
      jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))), platforms=["cuda"],
      disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
          q, q, v, w)
  module = exported.mlir_module()
  for kernel in ("_forward_kernel", "_dq_kernel", "_dkv_kernel"):
    assert f'name = "{kernel}"' in module
