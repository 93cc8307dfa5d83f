"""What a Transformer stack is: the validated configs of attention (spec §2) and
of the pre-norm stack, the option tables they check against, and the helpers
that turn a model family's size table plus user overrides into a StackConfig.

Every bad value raises one ValueError naming the value and what is allowed.
"""

from __future__ import annotations

import dataclasses

import jax

# Rank-collapse remedies to compare MHA against, each with the usual x + Attn residual
# (equations and citations in attention.py):
#   "realformer":     residual attention (He et al., 2021), H_n = H_{n−1} + s_n; 0 new params
#   "value_residual": ResFormer (Zhou et al., 2024), V_n ← λV_1 + (1−λ)V_n;        0 new params
#   "rezero":         x ← x + g_n·Attn(Norm x), g_n init 0 (Bachlechner et al., 2021);
#                     L new params (one scalar per layer), the only rival that adds any.
# DenseFormer's depth-weighted average (Pagliardini et al., 2024) is not here: layer n
# mixes all n earlier outputs, so the scan carry would have to hold an [L+1, B, T, D]
# history (L× activation memory, shapes fixed by L) — it does not fit the (x, state) carry.
ATTENTION_KINDS = ("standard", "hopfield", "realformer", "value_residual", "rezero")
RESIDUAL_FORMS = ("convex", "scaled_branch", "standard")
H0_POLICIES = ("zeros", "first_scores", "noise")
# How attention is computed, per kind. Standard: our einsum path, or
# jax.nn.dot_product_attention (XLA, or cuDNN's fused flash kernel on GPU). MHA: see
# mha_jax/kernels (materialised H, stacked features, fused Pallas kernel, or by shape).
IMPLEMENTATIONS = {"standard": ("naive", "xla", "cudnn", "flash"),
                   "hopfield": ("naive", "factorized", "fused", "layerwise", "auto"),
                   "realformer": ("naive",),
                   "value_residual": ("naive",),
                   "rezero": ("naive", "xla", "cudnn", "flash")}
HIDDEN_DTYPES = ("float32", "bfloat16")
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


def check_choice(name, value, allowed):
  if value not in allowed:
    raise ValueError(f"{name}={value!r} is not allowed; choose one of {tuple(allowed)}")


def check_unit_interval(name, value):
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name}={value!r} is outside [0, 1]")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """How attention and its residual work (spec §2). Defaults: the baseline."""
  kind: str = "standard"          # standard (x + Attn, no H) | hopfield (MHA) | realformer | value_residual | rezero
  alpha: float = 0.5              # α: residual weight of x
  alpha_hidden: float = 0.5       # α′: weight of H_{n−1} in H_n
  residual: str = "convex"        # MHA residual form, see attention.residual_update
  h0: str = "zeros"               # H before layer 1: zeros | first_scores | noise
  h0_noise_std: float = 1.0       # σ of H_0 for h0="noise"
  h0_noise_seed: int = 0          # H_0 noise is a fixed draw, equal at train and eval
  reset_every: int = 0            # restart H every N layers (0: never; 1: no memory)
  score_scale: float | None = None  # None: 1/√head_dim
  implementation: str = "naive"   # see IMPLEMENTATIONS (per kind) and mha_jax/kernels
  hidden_window: int = 0          # factorized MHA: keep the last W layers' features (0: all)
  hidden_dtype: str = "float32"   # fused MHA: dtype of the stored H (bfloat16 halves it)
  value_residual_lambda: float = 0.5  # λ of kind="value_residual"

  def __post_init__(self):
    check_choice("attention.kind", self.kind, ATTENTION_KINDS)
    check_choice("attention.residual", self.residual, RESIDUAL_FORMS)
    check_choice("attention.h0", self.h0, H0_POLICIES)
    check_choice(f"attention.implementation (kind={self.kind!r})", self.implementation,
                 IMPLEMENTATIONS[self.kind])
    check_choice("attention.hidden_dtype", self.hidden_dtype, HIDDEN_DTYPES)
    if self.hidden_window < 0:
      raise ValueError(f"attention.hidden_window={self.hidden_window} must be >= 0")
    if self.hidden_window and self.implementation not in ("factorized", "layerwise", "auto"):
      raise ValueError(f"attention.hidden_window={self.hidden_window} needs implementation "
                       f"'factorized', 'layerwise' or 'auto', got {self.implementation!r}")
    if self.hidden_dtype != "float32" and self.implementation != "fused":
      raise ValueError(f"attention.hidden_dtype={self.hidden_dtype!r} needs implementation "
                       f"'fused', got {self.implementation!r}")
    if self.implementation in ("factorized", "layerwise") and self.h0 == "noise":
      raise ValueError(f"attention.implementation={self.implementation!r} cannot carry a "
                       "random H_0 (h0='noise'); use 'naive', 'fused' or 'auto'")
    check_unit_interval("attention.alpha", self.alpha)
    check_unit_interval("attention.alpha_hidden", self.alpha_hidden)
    check_unit_interval("attention.value_residual_lambda", self.value_residual_lambda)
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
    check_choice("norm", self.norm, NORMS)
    check_choice("mlp", self.mlp, MLPS)
    check_choice("dtype", self.dtype, DTYPES)
    check_choice("param_dtype", self.param_dtype, DTYPES)
    check_choice("remat_policy", self.remat_policy, REMAT_POLICIES)
    check_unit_interval("dropout", self.dropout)
    check_unit_interval("attention_dropout", self.attention_dropout)
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
  else:   # the other kinds ignore `residual`
    residual = "x+u"
  if att.kind == "hopfield":
    return f"hopfield α={att.alpha:g} α′={att.alpha_hidden:g} residual={residual}"
  if att.kind == "value_residual":
    return f"value_residual λ={att.value_residual_lambda:g} residual={residual}"
  if att.kind == "rezero":
    return f"rezero residual={'x+g·u' if skip_connections else residual}"
  return f"{att.kind} residual={residual}"



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
