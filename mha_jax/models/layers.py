"""Transformer layers shared by ViT, GPT-2 and LLaMA, and the layer stack that
carries (x, H) from the first layer to the last.

The stack is `nn.scan` over one `Block` (params stacked on a leading "layers"
axis) or, with `scan_layers=False`, a Python loop over `layers_0 .. layers_{L-1}`
that computes the same numbers from the same (unstacked) parameters; see
`stack_layer_params` / `unstack_layer_params`.
"""

from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from mha_jax import attention

# "realformer": residual attention (He et al., 2021), H_n = H_{n−1} + s_n with the
# usual x + Attn residual: a rank-collapse remedy to compare MHA against.
ATTENTION_KINDS = ("standard", "hopfield", "realformer")
RESIDUAL_FORMS = ("convex", "scaled_branch", "standard")
H0_POLICIES = ("zeros", "first_scores", "noise")
# How standard attention is computed: our einsum path, or jax.nn.dot_product_attention
# (XLA, or cuDNN's fused flash kernel on GPU). MHA needs H, so it is always "naive".
IMPLEMENTATIONS = ("naive", "xla", "cudnn")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "swiglu")  # exact GELU (ViT), tanh GELU (GPT-2)
DTYPES = ("float32", "bfloat16", "float16")

# Name → jax.checkpoint policy for `nn.remat` around each block ("none": no remat).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "qkv_proj": jax.checkpoint_policies.save_only_these_names("query", "key", "value"),
}


def _check_choice(name, value, allowed):
  if value not in allowed:
    raise ValueError(f"{name}={value!r} is not allowed; choose one of {tuple(allowed)}")


def _check_unit_interval(name, value):
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name}={value!r} is outside [0, 1]")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """How attention and its residual work (spec §2). Defaults: the baseline."""
  kind: str = "standard"          # "standard" (x + Attn, no H) | "hopfield" (MHA) | "realformer"
  alpha: float = 0.5              # α: residual weight of x
  alpha_hidden: float = 0.5       # α′: weight of H_{n−1} in H_n
  residual: str = "convex"        # MHA residual form, see attention.residual_update
  h0: str = "zeros"               # H before layer 1: zeros | first_scores | noise
  h0_noise_std: float = 1.0       # σ of H_0 for h0="noise"
  h0_noise_seed: int = 0          # H_0 noise is a fixed draw, equal at train and eval
  reset_every: int = 0            # restart H every N layers (0: never; 1: no memory)
  score_scale: float | None = None  # None: 1/√head_dim
  implementation: str = "naive"   # standard attention only: naive | xla | cudnn

  def __post_init__(self):
    _check_choice("attention.kind", self.kind, ATTENTION_KINDS)
    _check_choice("attention.residual", self.residual, RESIDUAL_FORMS)
    _check_choice("attention.h0", self.h0, H0_POLICIES)
    _check_choice("attention.implementation", self.implementation, IMPLEMENTATIONS)
    if self.implementation != "naive" and self.kind != "standard":
      raise ValueError(f"attention.implementation={self.implementation!r} needs kind='standard' "
                       f"(a fused kernel never materialises H), got kind={self.kind!r}")
    _check_unit_interval("attention.alpha", self.alpha)
    _check_unit_interval("attention.alpha_hidden", self.alpha_hidden)
    if self.reset_every < 0:
      raise ValueError(f"attention.reset_every={self.reset_every} must be >= 0")
    if self.reset_every and self.h0 == "noise":
      raise ValueError("attention.reset_every needs h0 'zeros' or 'first_scores', got 'noise'")


@dataclasses.dataclass(frozen=True)
class StackConfig:
  """Shape and numerics of a pre-norm Transformer stack."""
  num_layers: int
  width: int
  num_heads: int
  mlp_dim: int
  attention: AttentionConfig = AttentionConfig()
  norm: str = "layernorm"
  norm_eps: float = 1e-6
  mlp: str = "gelu"
  use_bias: bool = True
  rope_theta: float | None = None    # rotary embeddings when set (LLaMA)
  dropout: float = 0.0               # on each residual branch
  attention_dropout: float = 0.0     # on attention weights
  init_std: float | None = None      # None: xavier-uniform (ViT); else normal(std)
  scale_residual_init: bool = False  # GPT-2: output projections std / √(2L)
  dtype: str = "float32"             # compute
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  skip_connections: bool = True      # False: x ← Attn(Norm x); x ← MLP(Norm x) (depth study)

  def __post_init__(self):
    if isinstance(self.attention, dict):
      object.__setattr__(self, "attention", AttentionConfig(**self.attention))
    for name in ("num_layers", "width", "num_heads", "mlp_dim"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
    if self.width % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} does not divide width={self.width}")
    _check_choice("norm", self.norm, NORMS)
    _check_choice("mlp", self.mlp, MLPS)
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("param_dtype", self.param_dtype, DTYPES)
    _check_choice("remat_policy", self.remat_policy, REMAT_POLICIES)
    _check_unit_interval("dropout", self.dropout)
    _check_unit_interval("attention_dropout", self.attention_dropout)
    if self.attention.implementation != "naive" and self.attention_dropout:
      raise ValueError(f"attention.implementation={self.attention.implementation!r} has no "
                       f"attention dropout; got attention_dropout={self.attention_dropout}")
    if self.rope_theta is not None and (self.width // self.num_heads) % 2:
      raise ValueError(f"rotary embeddings need an even head_dim, got {self.width // self.num_heads}")

  @property
  def head_dim(self):
    return self.width // self.num_heads

  def describe_attention(self):
    return describe_attention(self.attention, self.skip_connections)


def describe_attention(att: AttentionConfig, skip_connections=True):
  """Kind, α, α′ and the residual form actually used: every result names them."""
  if not skip_connections:
    residual = "none (x←u)"
  elif att.kind == "hopfield":
    residual = att.residual
  else:   # standard attention and RealFormer ignore `residual`
    residual = "x+u"
  if att.kind == "hopfield":
    return f"hopfield α={att.alpha:g} α′={att.alpha_hidden:g} residual={residual}"
  return f"{att.kind} residual={residual}"


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


def apply_rope(x_BxTxNxD, theta):
  """Rotary position embedding, half-split layout (as Hugging Face LLaMA stores it)."""
  length, head_dim = x_BxTxNxD.shape[1], x_BxTxNxD.shape[-1]
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles_TxHalf = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  cos = jnp.cos(angles_TxHalf)[None, :, None, :]
  sin = jnp.sin(angles_TxHalf)[None, :, None, :]
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


class SelfAttention(nn.Module):
  """Q/K/V/O projections around `attention.hopfield_attention`."""
  cfg: StackConfig

  @nn.compact
  def __call__(self, x_BxTxD, h_prev, restart, mask, deterministic):
    cfg, att = self.cfg, self.cfg.attention

    def project(name):
      y = Projection(cfg, (cfg.num_heads, cfg.head_dim), ("embed", "heads", "kv"),
                     name=name)(x_BxTxD)
      return checkpoint_name(y, name)

    q_BxTxNxD, k_BxTxNxD, v_BxTxNxD = project("query"), project("key"), project("value")
    if cfg.rope_theta is not None:
      q_BxTxNxD = apply_rope(q_BxTxNxD, cfg.rope_theta)
      k_BxTxNxD = apply_rope(k_BxTxNxD, cfg.rope_theta)
    use_dropout = not deterministic and cfg.attention_dropout > 0
    common = dict(mask=mask, scale=att.score_scale, dropout_rate=cfg.attention_dropout,
                  dropout_rng=self.make_rng("dropout") if use_dropout else None)
    if att.kind == "hopfield":
      out_BxTxNxD, h_BxNxTxT = attention.hopfield_attention(
          q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, h_prev, alpha_hidden=att.alpha_hidden,
          h0="first_scores" if att.h0 == "first_scores" else "zeros", restart=restart,
          **common)
    elif att.kind == "realformer":
      out_BxTxNxD, h_BxNxTxT = attention.hopfield_attention(
          q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, h_prev, alpha_hidden=1.0, score_weight=1.0,
          restart=restart, **common)
    elif att.implementation != "naive":
      out_BxTxNxD, h_BxNxTxT = jax.nn.dot_product_attention(
          q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, mask=mask, scale=att.score_scale,
          implementation=att.implementation), None
    else:
      out_BxTxNxD, h_BxNxTxT = attention.dot_product_attention(
          q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, **common), None
    if h_BxNxTxT is not None:
      h_BxNxTxT = nn.with_logical_constraint(h_BxNxTxT, ("batch", "heads", None, None))
    y_BxTxD = Projection(cfg, (cfg.width,), ("heads", "kv", "embed"), num_input_axes=2,
                         residual_projection=True, name="out")(out_BxTxNxD)
    return y_BxTxD, h_BxNxTxT


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


class Block(nn.Module):
  """Pre-norm block. MHA: x ← residual(x, Attn(Norm x)); then x ← x + MLP(Norm x).

  Standard attention and RealFormer use x ← x + Attn(Norm x).

  Called as ((x, h), restart, mask, deterministic) → ((x, h), per-layer outputs),
  the signature `nn.scan` needs; h is None for standard attention.
  """
  cfg: StackConfig
  return_intermediates: bool = False

  @nn.compact
  def __call__(self, carry, restart, mask, deterministic):
    cfg, att = self.cfg, self.cfg.attention
    x_BxTxD, h_prev = carry
    dropout = nn.Dropout(cfg.dropout, deterministic=deterministic)
    u_BxTxD, h_BxNxTxT = SelfAttention(cfg, name="attention")(
        make_norm(cfg, "attention_norm")(x_BxTxD), h_prev, restart, mask, deterministic)
    u_BxTxD = dropout(u_BxTxD)
    if not cfg.skip_connections:
      x_BxTxD = u_BxTxD
    elif att.kind == "hopfield":
      x_BxTxD = attention.residual_update(x_BxTxD, u_BxTxD, att.alpha, att.residual)
    else:
      x_BxTxD = x_BxTxD + u_BxTxD
    mlp_BxTxD = dropout(Mlp(cfg, name="mlp")(make_norm(cfg, "mlp_norm")(x_BxTxD)))
    x_BxTxD = x_BxTxD + mlp_BxTxD if cfg.skip_connections else mlp_BxTxD
    x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "length", "embed"))
    outputs = None
    if self.return_intermediates:
      outputs = {"residual": x_BxTxD}
      if h_BxNxTxT is not None:
        outputs["hidden_state"] = h_BxNxTxT
    return (x_BxTxD, h_BxNxTxT), outputs


def restart_flags(att: AttentionConfig, num_layers):
  """[L] bools: where a layer starts a new chain of hidden states."""
  layer = np.arange(num_layers)
  if att.reset_every:
    return layer % att.reset_every == 0
  # A noise H_0 is the initial carry itself, so layer 1 must not discard it.
  return (layer == 0) & (att.h0 != "noise")


def initial_hidden_state(att: AttentionConfig, batch, num_heads, length):
  """H_0 [B, N, T, T] float32: zeros, or for h0="noise" a fixed N(0, σ²) draw per
  head, the same for every example and batch size (train and eval see one H_0)."""
  shape = (batch, num_heads, length, length)
  if att.h0 == "noise":
    noise_1xNxTxT = jax.random.normal(jax.random.key(att.h0_noise_seed),
                                      (1,) + shape[1:], jnp.float32)
    return jnp.broadcast_to(att.h0_noise_std * noise_1xNxTxT, shape)
  return jnp.zeros(shape, jnp.float32)


class LayerStack(nn.Module):
  """L blocks carrying (x, H); returns x and, on request, stacked per-layer outputs
  {"residual": [L, B, T, D], "hidden_state": [L, B, N, T, T]}."""
  cfg: StackConfig

  @nn.compact
  def __call__(self, x_BxTxD, mask=None, *, deterministic=True, return_intermediates=False):
    cfg = self.cfg
    batch, length = x_BxTxD.shape[:2]
    x_BxTxD = x_BxTxD.astype(cfg.dtype)  # the scan carry keeps one dtype
    h_BxNxTxT = None
    if cfg.attention.kind != "standard":
      h_BxNxTxT = initial_hidden_state(cfg.attention, batch, cfg.num_heads, length)
    restarts_L = jnp.asarray(restart_flags(cfg.attention, cfg.num_layers))

    block = Block
    if cfg.remat_policy != "none":
      # 0 = self, 1 = carry, 2 = restart, 3 = mask, 4 = deterministic (static).
      block = nn.remat(Block, prevent_cse=not cfg.scan_layers, static_argnums=(4,),
                       policy=REMAT_POLICIES[cfg.remat_policy])
    carry = (x_BxTxD, h_BxNxTxT)
    if cfg.scan_layers:
      stack = nn.scan(block,
                      variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(0, nn.broadcast, nn.broadcast),  # restart per layer
                      length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      carry, outputs = stack(cfg, return_intermediates, name="layers")(
          carry, restarts_L, mask, deterministic)
    else:
      per_layer = []
      for i in range(cfg.num_layers):
        carry, out = block(cfg, return_intermediates, name=f"layers_{i}")(
            carry, restarts_L[i], mask, deterministic)
        per_layer.append(out)
      outputs = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer) if return_intermediates else None
    return carry[0], outputs


_LAYER_KEY = re.compile(r"^layers_(\d+)$")


def unstack_layer_params(params):
  """Scanned layout {"layers": leaves [L, ...]} → loop layout {"layers_i": ...}, at any depth."""
  if not isinstance(params, dict):
    return params
  out = {}
  for key, value in params.items():
    if key == "layers":
      num_layers = jax.tree.leaves(value)[0].shape[0]
      for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], value)
    else:
      out[key] = unstack_layer_params(value)
  return out


def stack_layer_params(params):
  """Loop layout {"layers_i": ...} → scanned layout {"layers": leaves [L, ...]}, at any depth."""
  if not isinstance(params, dict):
    return params
  layer_keys = sorted((k for k in params if _LAYER_KEY.match(k)),
                      key=lambda k: int(_LAYER_KEY.match(k).group(1)))
  out = {k: stack_layer_params(v) for k, v in params.items() if k not in layer_keys}
  if layer_keys:
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *(params[k] for k in layer_keys))
  return out


STACK_FIELDS = frozenset(f.name for f in dataclasses.fields(StackConfig))
ATTENTION_FIELDS = frozenset(f.name for f in dataclasses.fields(AttentionConfig))


def build_stack_config(defaults, overrides, model_fields):
  """Split user overrides between the StackConfig and the model's own fields.

  Returns (StackConfig, model kwargs); an unknown key raises one ValueError.
  """
  stack_kw, model_kw = dict(defaults), {}
  for key, value in overrides.items():
    if key in STACK_FIELDS:
      stack_kw[key] = value
    elif key in model_fields:
      model_kw[key] = value
    else:
      allowed = sorted(STACK_FIELDS | set(model_fields))
      raise ValueError(f"unknown model option {key!r}; allowed: {allowed}")
  attention_cfg = stack_kw.pop("attention", None) or {}
  if not isinstance(attention_cfg, AttentionConfig):
    attention_kw = dict(attention_cfg)
    for key in attention_kw.keys() - ATTENTION_FIELDS:
      raise ValueError(f"unknown attention option {key!r}; allowed: {sorted(ATTENTION_FIELDS)}")
    attention_cfg = AttentionConfig(**attention_kw)
  return StackConfig(attention=attention_cfg, **stack_kw), model_kw


def select_variant(family, variants, variant):
  if variant not in variants:
    raise ValueError(f"unknown {family} variant {variant!r}; allowed: {sorted(variants)}")
  return dict(variants[variant])
