"""The block's steps for the cross-layer rivals that carry more than x through the
layer scan: a history of earlier outputs (AttnRes, DenseFormer; the maths in
mha_jax/depth_mixing.py) or n residual streams (hyper-connections, mHC;
mha_jax/hyper_connections.py). Both also carry the layer index "depth_layer"."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mha_jax import depth_mixing, hyper_connections
from mha_jax.models.stack_config import StackConfig

STREAM_KINDS = ("hyper_connections",)


def initial_state(cfg: StackConfig, batch, length):
  """{"depth_history": zeros [slots, B, T, D]} or {"streams": zeros [n, B, T, D]},
  with "depth_layer" 0, for the kinds that carry them (layer 1 fills them: see
  `enter_layer`); None for the other kinds."""
  kind = cfg.attention.kind
  slots = depth_mixing.history_slots(kind, cfg.num_layers)
  if slots:
    carried = {"depth_history": jnp.zeros((slots, batch, length, cfg.width), cfg.dtype)}
  elif kind in STREAM_KINDS:
    carried = {"streams": jnp.zeros((hyper_connections.STREAMS, batch, length, cfg.width),
                                    cfg.dtype)}
  else:
    return None
  return {**carried, "depth_layer": jnp.zeros((), jnp.int32)}


def enter_layer(state, x_BxTxD):
  """Layer 1 writes the stack's input into history slot 0, or into every stream
  (later layers keep what they were handed)."""
  first = state.get("depth_layer") == 0
  if "depth_history" in state:
    history = state["depth_history"]
    slot_0 = jnp.where(first, x_BxTxD.astype(history.dtype), history[0])
    return dict(state, depth_history=depth_mixing.record(history, slot_0, 0))
  if "streams" in state:
    copies = hyper_connections.expand(x_BxTxD.astype(state["streams"].dtype))
    return dict(state, streams=jnp.where(first, copies, state["streams"]))
  return state


def leave_layer(state):
  """The next layer's index."""
  if "depth_layer" in state:
    return dict(state, depth_layer=state["depth_layer"] + 1)
  return state


def record_output(state, x_BxTxD, kind, sublayer):
  """Write this layer's `sublayer`-th output (1-based) after the embedding and the
  earlier layers' outputs; returns the state and how many entries are now written."""
  slot = 1 + depth_mixing.SLOTS_PER_LAYER[kind] * state["depth_layer"] + sublayer - 1
  history = depth_mixing.record(state["depth_history"], x_BxTxD, slot)
  return dict(state, depth_history=history), slot + 1


class DepthAttention(nn.Module):
  """AttnRes before one sublayer: a pseudo-query w [D] (init 0) and the scale [D] of the
  keys' RMSNorm (init 1) — the kind's only parameters."""
  cfg: StackConfig

  @nn.compact
  def __call__(self, history_HxBxTxD, filled):
    cfg = self.cfg
    query, key_scale = (self.param(name, nn.with_logical_partitioning(init, ("embed",)),
                                   (cfg.width,), cfg.param_dtype)
                        for name, init in (("query", nn.initializers.zeros),
                                           ("key_scale", nn.initializers.ones)))
    return depth_mixing.depth_attention(history_HxBxTxD, filled, query, key_scale, cfg.norm_eps)


class HyperConnection(nn.Module):
  """mHC around one sublayer (0 = attention, 1 = MLP): offsets "pre" [n], "post" [n],
  "res" [n, n] from the initial logits, all 0 at init — the kind's only parameters
  when static; `hyper_connections_dynamic` adds the projections "pre_projection"
  [n·D, n], "post_projection" [n·D, n], "res_projection" [n·D, n²] (0 at init) and
  "gates" [3]. Returns (pre, post, res) for the layer `layer` (traced), per token
  when dynamic."""
  cfg: StackConfig
  sublayer: int

  def _zeros(self, name, shape):
    init = nn.with_logical_partitioning(nn.initializers.zeros, (None,) * len(shape))
    return self.param(name, init, shape, self.cfg.param_dtype)

  @nn.compact
  def __call__(self, layer, streams_RxBxTxD):
    n = hyper_connections.STREAMS
    offsets = [self._zeros(name, shape)
               for name, shape in (("pre", (n,)), ("post", (n,)), ("res", (n, n)))]
    dynamic = None
    if self.cfg.attention.hyper_connections_dynamic:
      projections = [self._zeros(f"{name}_projection", (n * self.cfg.width, size))
                     for name, size in (("pre", n), ("post", n), ("res", n * n))]
      gates = self.param("gates", nn.with_logical_partitioning(
          nn.initializers.constant(hyper_connections.DYNAMIC_GATE_INIT), (None,)),
          (3,), self.cfg.param_dtype)
      dynamic = hyper_connections.dynamic_logits(streams_RxBxTxD, projections, gates,
                                                 self.cfg.norm_eps)
    return hyper_connections.mixing_weights(*offsets, 2 * layer + self.sublayer, dynamic)


def hyper_input(cfg: StackConfig, state, sublayer, name):
  """(the sublayer's input Σ_j pre_j x_j, its mixing weights)."""
  weights = HyperConnection(cfg, sublayer, name=name)(state["depth_layer"], state["streams"])
  return hyper_connections.read(state["streams"], weights[0]), weights


def hyper_output(state, weights, y_BxTxD):
  """(state with x_i ← Σ_j res_ij x_j + post_i y, the streams' mean as x)."""
  _, post, res = weights
  streams = hyper_connections.write(state["streams"], res, post, y_BxTxD)
  return dict(state, streams=streams), hyper_connections.readout(streams)
