"""Transformer layers shared by ViT, GPT-2 and LLaMA, and the layer stack that
carries (x, H) from the first layer to the last.

The stack is `nn.scan` over one `Block` (params stacked on a leading "layers"
axis) or, with `scan_layers=False`, a Python loop over `layers_0 .. layers_{L-1}`
that computes the same numbers from the same (unstacked) parameters; see
`param_layout`. The configs these modules read live in `stack_config`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from mha_jax import attention, depth_mixing, energy, kernels, kinds
from mha_jax.models import cross_layer, kv_cache
from mha_jax.models.stack_config import REMAT_POLICIES, StackConfig

def kernel_init(cfg: StackConfig, axes, residual_projection=False):
  if cfg.init_std is None:
    init = nn.initializers.xavier_uniform()
  else:
    std = cfg.init_std
    if residual_projection and cfg.scale_residual_init:
      std /= np.sqrt(2 * cfg.num_layers)
    init = nn.initializers.normal(std)
  return nn.with_logical_partitioning(init, axes)


def make_norm(cfg: StackConfig, name):
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
  if cfg.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      scale_init=scale_init, name=name)
  return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      scale_init=scale_init,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                      name=name)


def apply_rope(x_BxTxNxD, theta, positions_BxT=None):
  """Rotary position embedding, half-split layout (as Hugging Face LLaMA stores it);
  positions [B|1, T] default to 0 … T−1."""
  length, head_dim = x_BxTxNxD.shape[1], x_BxTxNxD.shape[-1]
  if positions_BxT is None:
    positions_BxT = jnp.arange(length)[None]
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles_BxTxHalf = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
  cos = jnp.cos(angles_BxTxHalf)[:, :, None, :]
  sin = jnp.sin(angles_BxTxHalf)[:, :, None, :]
  x1, x2 = jnp.split(x_BxTxNxD.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxTxNxD.dtype)


class Projection(nn.Module):
  """y = x · W + b contracting the last `num_input_axes` axes of x.

  Like `nn.DenseGeneral`, but the kernel is created in its full shape, so its
  logical axis names apply under `jax.set_mesh` (DenseGeneral initialises a
  flattened kernel and cannot take a 3-d logical annotation there).
  """
  cfg: StackConfig
  features: tuple
  axes: tuple                  # logical names of the kernel's axes
  num_input_axes: int = 1
  residual_projection: bool = False

  @nn.compact
  def __call__(self, x):
    cfg, n_in = self.cfg, self.num_input_axes
    in_shape = x.shape[-n_in:]
    out_axes = tuple(range(n_in, n_in + len(self.features)))
    if cfg.init_std is None:
      init = nn.initializers.xavier_uniform(in_axis=tuple(range(n_in)), out_axis=out_axes)
      init = nn.with_logical_partitioning(init, self.axes)
    else:
      init = kernel_init(cfg, self.axes, self.residual_projection)
    kernel = self.param("kernel", init, in_shape + tuple(self.features), cfg.param_dtype)
    y = jnp.tensordot(x.astype(cfg.dtype), kernel.astype(cfg.dtype), n_in)
    if cfg.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                             self.axes[n_in:]),
                        tuple(self.features), cfg.param_dtype)
      y = y + bias.astype(cfg.dtype)
    return y


def retrieves(att):
  """MHA with Hopfield retrieval on top of H_n (energy_steps or a non-softmax head)."""
  return att.energy_steps > 0 or att.separation != "softmax"


def retrieval_options(att, mask):
  return dict(steps=att.energy_steps, beta=att.score_scale, mask=mask,
              separation=att.separation, separation_param=att.separation_param)


class SelfAttention(nn.Module):
  """Q/K/V/O projections around `attention.hopfield_attention`; with `decode`, keys
  and values go through the layer's cache (`kv_cache.cached_keys_values`)."""
  cfg: StackConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxTxD, state, restart, mask, deterministic, positions_BxT=None,
               final_layers=None):
    """state: what this attention kind carries between layers (see `initial_state`);
    returns (y [B, T, D], the next layer's state, {"query", "key"} [B, T, N, D] as
    the scores use them). Under `decode` the state's H holds only the new rows,
    [B, N, T, S]. final_layers: layerwise MHA's replay."""
    cfg, att = self.cfg, self.cfg.attention
    h_prev = state.get("hidden")
    new_state = dict(state)   # keys this kind does not update ride along unchanged

    def project(name):
      y = Projection(cfg, (cfg.num_heads, cfg.head_dim), ("embed", "heads", "kv"),
                     name=name)(x_BxTxD)
      return checkpoint_name(y, name)

    q_BxTxNxD, k_BxTxNxD, v_BxTxNxD = project("query"), project("key"), project("value")
    if cfg.rope_theta is not None:
      q_BxTxNxD = apply_rope(q_BxTxNxD, cfg.rope_theta, positions_BxT)
      k_BxTxNxD = apply_rope(k_BxTxNxD, cfg.rope_theta, positions_BxT)
    query_key = {"query": q_BxTxNxD, "key": k_BxTxNxD}   # the scores' own q, k (analysis)
    if att.kind == "value_residual":
      v_first_BxTxNxD = jnp.where(restart, v_BxTxNxD, state["value_first"])
      new_state["value_first"] = v_first_BxTxNxD
      v_BxTxNxD = attention.value_residual_mix(v_first_BxTxNxD, v_BxTxNxD,
                                               att.value_residual_lambda)
    if self.decode:   # after the value mix: the cache holds the values attention uses
      k_BxTxNxD, v_BxTxNxD, mask = kv_cache.cached_keys_values(self, k_BxTxNxD, v_BxTxNxD, mask)
    use_dropout = not deterministic and cfg.attention_dropout > 0
    common = dict(mask=mask, scale=att.score_scale, dropout_rate=cfg.attention_dropout,
                  dropout_rng=self.make_rng("dropout") if use_dropout else None)
    if kernels.resolve(att, cfg.num_layers, *x_BxTxD.shape[:2], cfg.num_heads, cfg.head_dim,
                       self.decode) != "naive":
      out_BxTxNxD, kernel_state = kernels.hopfield_attention(
          att, cfg.num_layers, q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, state, restart=restart,
          mask=mask, final_layers=final_layers, causal=cfg.causal and not self.decode)
      new_state.update(kernel_state)
      h_BxNxTxT = new_state.pop("hidden", None)
    elif att.kind == "hopfield":
      out_BxTxNxD, h_BxNxTxT = attention.hopfield_attention(
          q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, h_prev,
          alpha_hidden=state.get("alpha_hidden", att.alpha_hidden),
          h0=att.chain_start, restart=restart,
          **common)
      if retrieves(att):
        out_BxTxNxD = energy.retrieve_from_logits(h_BxNxTxT, k_BxTxNxD, v_BxTxNxD,
                                                  **retrieval_options(att, mask))
    elif att.kind == "hopfield_energy":
      out_BxTxNxD, h_BxNxTxT = energy.hopfield_retrieve(
          q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, **retrieval_options(att, mask)), None
    elif att.kind == "realformer":
      out_BxTxNxD, h_BxNxTxT = attention.hopfield_attention(
          q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, h_prev, alpha_hidden=1.0, score_weight=1.0,
          restart=restart, **common)
    elif att.implementation == "flash":
      out_BxTxNxD, h_BxNxTxT = kernels.flash_attention(q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, mask=mask,
          scale=att.score_scale, causal=cfg.causal and not self.decode), None
    elif att.implementation != "naive":
      out_BxTxNxD, h_BxNxTxT = jax.nn.dot_product_attention(
          q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, mask=mask, scale=att.score_scale,
          implementation=att.implementation), None
    else:
      out_BxTxNxD, h_BxNxTxT = attention.dot_product_attention(
          q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, **common), None
    if h_BxNxTxT is not None:
      new_state["hidden"] = nn.with_logical_constraint(h_BxNxTxT, ("batch", "heads", None, None))
    y_BxTxD = Projection(cfg, (cfg.width,), ("heads", "kv", "embed"), num_input_axes=2,
                         residual_projection=True, name="out")(out_BxTxNxD)
    return y_BxTxD, new_state, query_key


class Mlp(nn.Module):
  cfg: StackConfig

  @nn.compact
  def __call__(self, x_BxTxD):
    cfg = self.cfg

    def dense(features, axes, name, residual_projection=False):
      return nn.Dense(features, use_bias=cfg.use_bias,
                      kernel_init=kernel_init(cfg, axes, residual_projection),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
                      dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)

    if cfg.mlp == "swiglu":
      gate = dense(cfg.mlp_dim, ("embed", "mlp"), "gate")(x_BxTxD)
      up = dense(cfg.mlp_dim, ("embed", "mlp"), "up")(x_BxTxD)
      hidden_BxTxF = nn.silu(gate) * up
      return dense(cfg.width, ("mlp", "embed"), "down", True)(hidden_BxTxF)
    hidden_BxTxF = nn.gelu(dense(cfg.mlp_dim, ("embed", "mlp"), "fc1")(x_BxTxD),
                           approximate=cfg.mlp == "gelu_tanh")
    return dense(cfg.width, ("mlp", "embed"), "fc2", True)(hidden_BxTxF)


def dropout_by_stream(dropout, layerwise_inputs, state):
  """drop(y, stream): layerwise MHA folds the layer and stream into its shared key."""
  if "dropout_key" not in layerwise_inputs:
    return lambda y, stream: dropout(y)
  layer_key = jax.random.fold_in(layerwise_inputs["dropout_key"], state["layer"])
  return lambda y, stream: dropout(y, rng=jax.random.fold_in(layer_key, stream))


class Block(nn.Module):
  """Pre-norm block. MHA: x ← residual(x, Attn(Norm x)); then x ← x + MLP(Norm x).

  Standard attention and RealFormer use x ← x + Attn(Norm x); the cross-layer rivals
  that carry a history or residual streams take their steps from `cross_layer`.

  Called as ((x, state), restart, mask, deterministic, positions) → ((x, state),
  per-layer outputs), the signature `nn.scan` needs; state is the dict an attention
  kind carries from layer to layer ({} for standard attention, {"hidden": H} for MHA).
  """
  cfg: StackConfig
  return_intermediates: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, carry, restart, mask, deterministic, positions_BxT=None,
               layerwise_inputs=None):
    """layerwise_inputs: layerwise MHA's {"final_layers": buffers} (replay pass)
    and {"dropout_key": key}, which both passes use so their masks agree."""
    cfg, att = self.cfg, self.cfg.attention
    x_BxTxD, state = carry
    layerwise_inputs = layerwise_inputs or {}
    state = cross_layer.enter_layer(state, x_BxTxD)
    drop = dropout_by_stream(nn.Dropout(cfg.dropout, deterministic=deterministic),
                             layerwise_inputs, state)
    streams = att.kind in cross_layer.STREAM_KINDS
    if streams:
      x_BxTxD, mix = cross_layer.hyper_input(cfg, state, 0, "attention_hyper")
    u_BxTxD, state, query_key = SelfAttention(cfg, self.decode, name="attention")(
        make_norm(cfg, "attention_norm")(x_BxTxD), state, restart, mask, deterministic,
        positions_BxT, layerwise_inputs.get("final_layers"))
    u_BxTxD = drop(u_BxTxD, 0)
    if streams:   # the stream mixing is the kind's skip: skip_connections changes nothing
      state, _ = cross_layer.hyper_output(state, mix, u_BxTxD)
      x_BxTxD, mix = cross_layer.hyper_input(cfg, state, 1, "mlp_hyper")
    else:
      x_BxTxD, state = self.attention_residual(x_BxTxD, u_BxTxD, state)
    mlp_BxTxD = drop(Mlp(cfg, name="mlp")(make_norm(cfg, "mlp_norm")(x_BxTxD)), 1)
    if streams:
      state, x_BxTxD = cross_layer.hyper_output(state, mix, mlp_BxTxD)
    elif att.kind == "attention_residuals":
      state, filled = cross_layer.record_output(state, mlp_BxTxD, att.kind, 2)
      x_BxTxD = cross_layer.DepthAttention(cfg, name="output_depth_attention")(
          state["depth_history"], filled)
    else:
      x_BxTxD = x_BxTxD + mlp_BxTxD if cfg.skip_connections else mlp_BxTxD
    if att.kind == "denseformer":
      state, filled = cross_layer.record_output(state, x_BxTxD, att.kind, 1)
      delta = self.param("dwa_delta", nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                         state["depth_history"].shape[:1], cfg.param_dtype)
      x_BxTxD = depth_mixing.depth_weighted_average(
          state["depth_history"], depth_mixing.dwa_weights(delta, filled))
    state = cross_layer.leave_layer(state)
    x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "length", "embed"))
    outputs = None
    if self.return_intermediates:
      outputs = {"residual": x_BxTxD, **query_key}
      hidden = kernels.hidden_state(state, x_BxTxD.shape[1])
      if hidden is not None:
        outputs["hidden_state"] = hidden
    return (x_BxTxD, state), outputs

  def attention_residual(self, x_BxTxD, u_BxTxD, state):
    """(x after the attention sublayer's residual rule, state)."""
    cfg, att = self.cfg, self.cfg.attention
    if att.kind == "attention_residuals":   # no additive skip: the depth softmax replaces it
      state, filled = cross_layer.record_output(state, u_BxTxD, att.kind, 1)
      return cross_layer.DepthAttention(cfg, name="mlp_depth_attention")(
          state["depth_history"], filled), state
    if not cfg.skip_connections:
      return u_BxTxD, state
    if att.kind == "hopfield":
      return attention.residual_update(x_BxTxD, u_BxTxD, state.get("alpha", att.alpha),
                                       att.residual), state
    if att.kind == "rezero":
      gate = self.param("rezero_gate", nn.with_logical_partitioning(nn.initializers.zeros, ()),
                        (), cfg.param_dtype)
      return attention.gated_residual(x_BxTxD, u_BxTxD, gate), state
    return x_BxTxD + u_BxTxD, state


OVERRIDES = "attention_overrides"     # variable collection read by LayerStack
OVERRIDABLE = ("alpha", "alpha_hidden")


def initial_state(cfg: StackConfig, batch, length, positions_BxT=None, key_positions_BxS=None,
                  decode=False, replay=False):
  """The attention state before layer 1: {} for standard attention and ReZero,
  {"value_first": placeholder V_1} for the value residual, a history or residual
  streams for the cross-layer rivals (`cross_layer.initial_state`), a kernel's carry
  (see `kernels.initial_state`), else {"hidden": H_0} ([B, N, T, S]; see
  `attention.initial_hidden_state` for the positions)."""
  att = cfg.attention
  if kinds.get(att.kind).carries == "nothing":
    return {}
  if att.kind == "value_residual":   # replaced by layer 1's values (restart flag)
    return {"value_first": jnp.zeros((batch, length, cfg.num_heads, cfg.head_dim), cfg.dtype)}
  carried = cross_layer.initial_state(cfg, batch, length)
  if carried is not None:
    return carried
  stacked = kernels.initial_state(att, cfg.num_layers, batch, length, cfg.num_heads,
                                  cfg.head_dim, cfg.dtype, decode, replay)
  if stacked is not None:
    return stacked
  h0 = attention.initial_hidden_state(
      batch, cfg.num_heads, length, noise_seed=att.h0_noise_seed,
      noise_std=att.h0_noise_std if att.h0 == "noise" else None,
      query_positions=positions_BxT, key_positions=key_positions_BxS)
  return {"hidden": h0.astype(att.hidden_dtype)}


def carry_bytes(cfg: StackConfig, batch, length):
  """Bytes of the state one layer hands the next (`initial_state`), measured with
  jax.eval_shape: the scan keeps one such carry per layer for the backward pass."""
  shapes = jax.eval_shape(lambda: initial_state(cfg, batch, length))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


class LayerStack(nn.Module):
  """L blocks carrying (x, H); returns x and, on request, stacked per-layer outputs
  {"residual": [L, B, T, D], "query", "key": [L, B, T, N, D], "hidden_state":
  [L, B, N, T, T]}.

  α and α′ come from the config, unless the variables passed to `apply` hold an
  `OVERRIDES` collection with this module's {"alpha": a, "alpha_hidden": a′}
  (arrays, so a sweep can trace and vmap them); they then ride in the carry.

  positions [B|1, T] (rotary embeddings, H_0 noise) default to 0 … T−1. With
  `decode`, each layer attends over its K/V cache (`kv_cache.cached_keys_values`), `mask`
  covers the S cache slots and key_positions [B, S] are the slots' positions.
  """
  cfg: StackConfig

  def overrides(self):
    return {name: self.get_variable(OVERRIDES, name) for name in OVERRIDABLE
            if self.has_variable(OVERRIDES, name)}

  @nn.compact
  def __call__(self, x_BxTxD, mask=None, *, deterministic=True, return_intermediates=False,
               positions=None, key_positions=None, decode=False):
    cfg = self.cfg
    batch, length = x_BxTxD.shape[:2]
    x_BxTxD = x_BxTxD.astype(cfg.dtype)  # the scan carry keeps one dtype
    if cfg.causal and not decode:   # (decoding masks the cache by positions)
      mask = attention.causal_mask(length) & (True if mask is None else mask)
    restarts_L = jnp.asarray(attention.restart_flags(
        cfg.num_layers, reset_every=cfg.attention.reset_every,
        carried_h0=cfg.attention.h0 == "noise"))

    block = Block
    if cfg.remat_policy != "none" and not decode:  # nothing to differentiate
      # 0 = self, 1 = carry, 2 = restart, 3 = mask, 4 = deterministic (static), 5 = positions.
      block = nn.remat(Block, prevent_cse=not cfg.scan_layers, static_argnums=(4,),
                       policy=REMAT_POLICIES[cfg.remat_policy])
    if cfg.scan_layers:
      stack = nn.scan(block,
                      variable_axes={"params": 0, "cache": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(0,) + (nn.broadcast,) * 4,  # restart per layer
                      length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      stack = stack(cfg, return_intermediates, decode, name="layers")
    else:
      blocks = [block(cfg, return_intermediates, decode, name=f"layers_{i}")
                for i in range(cfg.num_layers)]

      def stack(carry, restarts, *args):
        per_layer = []
        for i, layer in enumerate(blocks):
          carry, out = layer(carry, restarts[i], *args)
          per_layer.append(out)
        return carry, (jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
                       if return_intermediates else None)

    def run(replay=False, layerwise_inputs=None):
      state = initial_state(cfg, batch, length, positions, key_positions, decode, replay)
      return stack((x_BxTxD, {**state, **self.overrides()}), restarts_L, mask, deterministic,
                   positions, layerwise_inputs)

    if kernels.resolve(cfg.attention, cfg.num_layers, batch, length, cfg.num_heads,
                       cfg.head_dim, decode) != "layerwise":
      carry, outputs = run()
      return carry[0], outputs
    # Layerwise MHA (kernels/layerwise_stack.py): a collect pass fills every layer's
    # q, k buffers; the differentiated replay reads them; intermediates from the first.
    shared = {}
    if not deterministic and cfg.dropout:
      shared["dropout_key"] = self.make_rng("dropout")
    carry, outputs = run(layerwise_inputs=shared)
    final_layers = {key: jax.lax.stop_gradient(value) for key, value in carry[1].items()
                    if key in kernels.layerwise_stack.FINAL_BUFFERS}
    carry, _ = run(replay=True, layerwise_inputs={**shared, "final_layers": final_layers})
    return carry[0], outputs
