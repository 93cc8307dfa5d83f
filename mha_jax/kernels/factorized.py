"""Factorised MHA: the hidden state as stacked features, never as a T×T carry.

Unrolling H_n = α′ H_{n−1} + (1−α′) s_n with s_l = scale · q_l k_lᵀ gives

    H_n = Σ_{l ≤ n} w_{n,l} · scale · q_l k_lᵀ = Q̃_n K̃_nᵀ
    Q̃_n = [w_{n,1} scale q_1, …, w_{n,n} scale q_n]     [B, T, N, n·D]
    K̃_n = [k_1, …, k_n]                                 [B, S, N, n·D]

so softmax(mask(H_n)) V_n is one dot-product attention over stacked features.
w comes from the chain start r (layer 1, or every `reset_every` layers):
w_{n,l} = (1−α′) α′^{n−l} for r < l ≤ n, w_{n,r} = c₀ α′^{n−r} with c₀ = 1−α′
(h0 "zeros") or 1 (h0 "first_scores"), and 0 before r. The scan carries Q̃, K̃ in
a shift register of W slots (W = `hidden_window`, or the depth):

    Q̃_n = [α′ Q̃_{n−1}, w_{n,n} scale q_n],   K̃_n = [K̃_{n−1}, k_n]   (oldest slot drops)

Slots not yet written are zero and add nothing to H. With W ≥ depth the numbers
are those of the materialised path.

Truncation bound (W < depth): the dropped layers l ≤ n−W carry total weight
Σ_{l ≤ n−W} w_{n,l} ≤ α′^W, so with σ = max_{l ≤ n−W} |s_l| (entrywise)

    |H_n − H_n^{(W)}| ≤ ε = α′^W · σ,

and since perturbing logits by at most ε changes each softmax weight by a factor
within [e^{−2ε}, e^{2ε}], each attention row moves by ≤ e^{2ε} − 1 in ℓ₁ and the
layer output by ≤ (e^{2ε} − 1) · max|v|.

The attention itself: on CPU an einsum over (slot, D) then a masked softmax
(the T×S scores of one layer exist only inside the layer). On GPU and TPU,
`jax.nn.dot_product_attention` with V zero-padded to the stacked width W·D (its
Q, K and V must share a head dim) and an explicit `implementation`
(`dot_product_implementation`; jax's default, None, is the XLA path everywhere):

- GPU: cuDNN's flash kernel where jax 0.10's cuDNN checks hold — Q̃ in bf16 or
  fp16, W·D a multiple of 8 and ≤ 128 (≤ 256 from Hopper, compute capability
  9.0), T and S even when a mask is given (jax turns a boolean mask into an
  additive T×S bias for cuDNN, so that bias is in memory, the scores are not).
  Otherwise the XLA path, with the T×S scores of the layer in memory: float32
  compute, or W·D > 256 — GPT-2 small at full depth has W·D = 12·64 = 768.
- TPU: the XLA path (T×S scores in memory). The Pallas TPU flash kernel takes a
  causal flag and segment ids, not an arbitrary boolean mask.

Cost: the score product is W× that of standard attention.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mha_jax import attention

STATE_KEYS = ("query_stack", "key_stack")


def layer_weights(num_layers, alpha_hidden, *, h0="zeros", reset_every=0, carried_h0=False):
  """w [L, L]: H_n = Σ_l w[n, l] s_l (lower triangular), the closed form of the scan."""
  restarts = attention.restart_flags(num_layers, reset_every=reset_every, carried_h0=carried_h0)
  w = np.zeros((num_layers, num_layers))
  for n in range(num_layers):
    if n > 0 and not restarts[n]:
      w[n, :n] = alpha_hidden * w[n - 1, :n]
    w[n, n] = 1.0 if (restarts[n] and h0 == "first_scores") else 1.0 - alpha_hidden
  return w


def window_error_bound(alpha_hidden, window, max_abs_score):
  """(ε, ℓ₁ bound per attention row) for a window of W layers: see the module doc."""
  eps = alpha_hidden ** window * max_abs_score
  return eps, float(np.expm1(2 * eps))


def initial_state(batch, length, num_heads, head_dim, slots, dtype):
  """Empty shift registers {"query_stack", "key_stack"}: [B, T, N, W, D] zeros."""
  zeros = jnp.zeros((batch, length, num_heads, slots, head_dim), dtype)
  return dict.fromkeys(STATE_KEYS, zeros)


def push(state, q_BxTxNxD, k_BxSxNxD, *, alpha_hidden, restart, h0, scale):
  """The carry update: older query slots decay by α′ (zeroed on a restart), the new
  layer's q (weighted by w_{n,n}·scale) and k enter the last slot."""
  restart = jnp.asarray(restart)
  newest_weight = jnp.where(restart, 1.0 if h0 == "first_scores" else 1.0 - alpha_hidden,
                            1.0 - alpha_hidden)
  decay = jnp.where(restart, 0.0, alpha_hidden)
  q_stack, k_stack = state["query_stack"], state["key_stack"]
  q_new = (newest_weight * scale * q_BxTxNxD).astype(q_stack.dtype)
  q_stack = jnp.concatenate([(decay * q_stack[:, :, :, 1:]).astype(q_stack.dtype),
                             q_new[:, :, :, None]], axis=3)
  k_stack = jnp.concatenate([k_stack[:, :, :, 1:], k_BxSxNxD.astype(k_stack.dtype)[:, :, :, None]],
                            axis=3)
  constrain = lambda x: nn.with_logical_constraint(x, ("batch", None, "heads", None, None))
  return {"query_stack": constrain(q_stack), "key_stack": constrain(k_stack)}


def hidden_state(state):
  """H_n = Q̃ K̃ᵀ [B, N, T, S] float32 (for analysis; the layers never build it)."""
  return jnp.einsum("btnwd,bsnwd->bnts", state["query_stack"], state["key_stack"],
                    preferred_element_type=jnp.float32)


def _einsum_attention(q_stack, k_stack, v_BxSxNxD, mask):
  weights_BxNxTxS = attention.masked_softmax(hidden_state({"query_stack": q_stack,
                                                           "key_stack": k_stack}), mask)
  return jnp.einsum("bnts,bsnd->btnd", weights_BxNxTxS.astype(v_BxSxNxD.dtype), v_BxSxNxD)


CUDNN_DTYPES = ("bfloat16", "float16")


def dot_product_implementation(backend, dtype, width, lengths, masked, capability=(0, 0)):
  """The `implementation` of jax.nn.dot_product_attention for stacked features of
  head dim `width` and `dtype` on `backend`: "cudnn" where its checks (module
  docstring) hold, else "xla". `capability`: the GPU's compute capability."""
  max_width = 256 if capability >= (9, 0) else 128
  fits_cudnn = (jnp.dtype(dtype).name in CUDNN_DTYPES and width % 8 == 0
                and width <= max_width and not (masked and any(n % 2 for n in lengths)))
  return "cudnn" if backend == "gpu" and fits_cudnn else "xla"


def _compute_capability():
  """(major, minor) of the first device's CUDA compute capability, (0, 0) if none."""
  version = getattr(jax.devices()[0], "compute_capability", "0.0")
  return tuple(int(part) for part in version.split(".")[:2])


def _library_attention(q_stack, k_stack, v_BxSxNxD, mask):
  b, t, n, slots, d = q_stack.shape
  flat = lambda x: x.reshape(x.shape[:3] + (slots * d,))
  v_padded = jnp.pad(v_BxSxNxD, ((0, 0), (0, 0), (0, 0), (0, (slots - 1) * d)))
  backend = jax.default_backend()
  implementation = dot_product_implementation(
      backend, q_stack.dtype, slots * d, (t, k_stack.shape[1]), mask is not None,
      _compute_capability() if backend == "gpu" else (0, 0))
  out = jax.nn.dot_product_attention(flat(q_stack), flat(k_stack).astype(q_stack.dtype),
                                     v_padded.astype(q_stack.dtype), mask=mask, scale=1.0,
                                     implementation=implementation)
  return out[..., :d].astype(v_BxSxNxD.dtype)


def factorized_hopfield_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, state, *, alpha_hidden,
                                  restart=False, h0="zeros", mask=None, scale=None):
  """One MHA layer from the stacked features; returns (out [B, T, N, D], new state).

  `state` holds the previous layers' shift registers (see `initial_state`); the
  result equals `attention.hopfield_attention` whenever the window holds every
  layer since the chain started.
  """
  if scale is None:
    scale = q_BxTxNxD.shape[-1] ** -0.5
  state = push(state, q_BxTxNxD, k_BxSxNxD, alpha_hidden=alpha_hidden, restart=restart, h0=h0,
               scale=scale)
  args = (state["query_stack"], state["key_stack"], v_BxSxNxD, mask)
  if mask is None:
    out = jax.lax.platform_dependent(*args[:3], cpu=lambda *a: _einsum_attention(*a, None),
                                     default=lambda *a: _library_attention(*a, None))
  else:
    out = jax.lax.platform_dependent(*args, cpu=_einsum_attention, default=_library_attention)
  return out, state
