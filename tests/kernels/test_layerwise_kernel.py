"""The layer-wise flash kernel (kernels/layerwise.py) against the materialised
computation softmax(mask(Σ_l w_l q_l k_lᵀ)) V in float64-free float32 jnp:
outputs and gradients with respect to every slot's q and k, v and the weights
(≤ 1e-5), in Pallas interpret mode with 8×8 tiles so the 16-token sequence
crosses tile borders both ways; causal block skipping, a dense mask on top, and
the Mosaic TPU lowering (compiled ahead of time with libtpu when installed).
"""

import re

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
    assert f'name = "layerwise_triton{kernel}"' in module


@pytest.mark.parametrize("backend", ["mosaic", "triton"])
def test_slots_outside_the_live_range_are_never_read(backend):
  """A stack's layer n reads only its slots [first, n]: slots outside `live`
  poisoned with NaN (0 · NaN would be NaN) leave the output and the gradients
  of the live slots equal to the materialised attention over those slots, and
  get exactly zero gradients themselves."""
  q, k, v, w = inputs(seed=3, slots=4)
  poison = lambda x: x.at[0].set(jnp.nan).at[3].set(jnp.nan)
  mask = padded_causal_mask()
  kernel = lambda q, k, v, w: layerwise.layerwise_attention(
      q, k, v, w, mask=mask, causal=True, block=8, interpret=True, backend=backend, live=(1, 3))
  out, (dq, dk, dv, dw) = value_and_grads(kernel, (poison(q), poison(k), v, w))
  ref_out, (ref_dq, ref_dk, ref_dv, ref_dw) = value_and_grads(
      lambda *a: reference(*a, attention.causal_mask(T) & mask), (q[1:3], k[1:3], v, w[1:3]))
  assert_close((out, dq[1:3], dk[1:3], dv, dw[1:3]), (ref_out, ref_dq, ref_dk, ref_dv, ref_dw))
  for grad in (dq[0], dq[3], dk[0], dk[3], dw[0], dw[3]):
    assert float(jnp.abs(grad).max()) == 0.0


@pytest.mark.parametrize("backend", ["mosaic", "triton"])
def test_backward_adds_the_slot_gradients_into_the_sinks(backend):
  """`backward` returns sink + w_l G_l on the live slots (the gradients of the
  materialised attention) and the dead slots of the sinks untouched, NaN included."""
  q, k, v, w = inputs(seed=4, slots=4)
  live = (1, 3)
  q_h, k_h, v_h = jnp.swapaxes(q, 2, 3), jnp.swapaxes(k, 2, 3), jnp.swapaxes(v, 1, 2)
  opts = layerwise.options(T, T, has_mask=False, causal=True, block=8, interpret=True,
                           backend=backend)
  slots, mask = jnp.array(live, jnp.int32), layerwise.dense_mask(None, T, T)
  o, lse = layerwise.forward(w, slots, q_h, k_h, v_h, mask, opts)
  do = jax.random.normal(jax.random.key(5), o.shape)
  sinks = [jax.random.normal(jax.random.key(6 + i), q_h.shape).at[3].set(jnp.nan)
           for i in range(2)]
  new_q_sink, new_k_sink, _, dw = layerwise.backward(w, slots, q_h, k_h, v_h, mask, o, lse, do,
                                                     *sinks, opts)
  attend = lambda q, k, w: jnp.swapaxes(reference(q, k, v, w, attention.causal_mask(T)), 1, 2)
  ref_o, pullback = jax.vjp(attend, q[1:3], k[1:3], w[1:3])
  ref_dq, ref_dk, ref_dw = pullback(do)
  np.testing.assert_allclose(o, ref_o, atol=TOL)
  for new, old, ref in ((new_q_sink, sinks[0], ref_dq), (new_k_sink, sinks[1], ref_dk)):
    np.testing.assert_allclose(new[1:3], old[1:3] + jnp.swapaxes(ref, 2, 3), atol=TOL)
    np.testing.assert_array_equal(new[0], old[0])
    assert bool(jnp.isnan(new[3]).all())
  np.testing.assert_allclose(dw[1:3], ref_dw, atol=TOL)


def test_cost_estimate_counts_the_live_slots_and_visited_tiles():
  """The kernel's CostEstimate (what XLA's roofline sees) follows the work done:
  causal 16×16 in 8×8 tiles visits 3 of 4 tiles; the logits take one matmul
  per live slot and PV one more."""
  q, k, v, w = inputs()
  costs = []
  for live in ((0, 1), (0, 3)):
    jaxpr = jax.make_jaxpr(lambda q, k, v, w, live=live: layerwise.layerwise_attention(
        q, k, v, w, causal=True, block=8, interpret=True, live=live))(q, k, v, w)
    costs += [int(f) for f in re.findall(r"CostEstimate\(flops=(\d+)", str(jaxpr))]
  pairs = B * N * 3 * 8 * 8
  assert costs == [2 * pairs * D * 2, 2 * pairs * D * 4]
