"""What a Transformer stack is: the validated configs of attention (spec §2) and
of the pre-norm stack, the option tables they check against, and the helpers
that turn a model family's size table plus user overrides into a StackConfig.

Every bad value raises one ValueError naming the value and what is allowed.
"""

from __future__ import annotations

import dataclasses

import jax

from mha_jax import attention, energy, kinds

# Facts about each attention kind (what it carries and reads, its implementations,
# residual rule and citation) live in one table: mha_jax/kinds.py.
# H before layer 1: a chain start (attention.CHAIN_STARTS), or a fixed random draw.
H0_POLICIES = attention.CHAIN_STARTS + ("noise",)
RESIDUAL_FORMS = ("convex", "scaled_branch", "standard")
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


def check_fields_read(att, kind):
  """A field the kind does not read must keep its default: a set value would be
  silently ignored (and misreported in config.json and results)."""
  for field in dataclasses.fields(att):
    value = getattr(att, field.name)
    if field.name not in kind.all_fields and value != field.default:
      raise ValueError(
          f"attention.{field.name}={value!r} is not read by attention.kind={kind.name!r}, "
          f"which reads only {kind.all_fields}; leave it at its default {field.default!r}")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """How attention and its residual work (spec §2). Defaults: the baseline."""
  kind: str = "standard"          # a row of mha_jax/kinds.py: standard | hopfield (MHA) | rivals
  alpha: float = 0.5              # α: residual weight of x
  alpha_hidden: float = 0.5       # α′: weight of H_{n−1} in H_n
  residual: str = "scaled_branch"  # MHA residual form, see attention.residual_update
  h0: str = "zeros"               # H before layer 1: zeros | first_scores | noise
  h0_noise_std: float = 1.0       # σ of H_0 for h0="noise"
  h0_noise_seed: int = 0          # H_0 noise is a fixed draw, equal at train and eval
  reset_every: int = 0            # restart H every N layers (0: never; 1: no memory)
  score_scale: float | None = None  # None: 1/√head_dim
  implementation: str = "naive"   # allowed per kind: kinds.KINDS[kind].implementations
  hidden_window: int = 0          # factorized MHA: keep the last W layers' features (0: all)
  hidden_dtype: str = "float32"   # fused MHA: dtype of the stored H (bfloat16 halves it)
  hidden_budget_bytes: int = 0    # auto: most bytes per device for the saved H (0: a quarter
  #                                 of the device's memory where JAX reports it; kernels.choose)
  layerwise_keep_outputs: bool = False  # layerwise: keep each layer's attention output
  #                                 from the collect pass (one more [L, B, N, T, D] buffer)
  #                                 instead of rerunning its forward kernels in the replay
  value_residual_lambda: float = 0.5  # λ of kind="value_residual"
  hyper_connections_dynamic: bool = False  # kind="hyper_connections": mHC's per-token
  #                                 (input-dependent) mixing term beside the static one
  # Hopfield retrieval (mha_jax/energy.py): kind="hopfield_energy", or MHA's H_n as the
  # step-0 logits with kind="hopfield" (this codebase's combination, in neither paper).
  energy_steps: int = 0           # updates ξ ← Kᵀ sep(β K ξ) per layer (0: one readout)
  separation: str = "softmax"     # energy.SEPARATIONS: the Lagrangian's gradient
  separation_param: float | None = None  # entmax α, polynomial degree n, cubic c₃ (c₂ = 0)

  def __post_init__(self):
    kind = kinds.get(self.kind)
    check_choice("attention.residual", self.residual, RESIDUAL_FORMS)
    check_choice("attention.h0", self.h0, H0_POLICIES)
    check_choice(f"attention.implementation (kind={self.kind!r})", self.implementation,
                 kind.implementations)
    check_fields_read(self, kind)
    check_choice("attention.hidden_dtype", self.hidden_dtype, HIDDEN_DTYPES)
    if self.hidden_window < 0:
      raise ValueError(f"attention.hidden_window={self.hidden_window} must be >= 0")
    if self.hidden_budget_bytes < 0 or (self.hidden_budget_bytes
                                         and self.implementation != "auto"):
      raise ValueError(f"attention.hidden_budget_bytes={self.hidden_budget_bytes} must be 0, "
                       f"or > 0 with implementation 'auto' (got {self.implementation!r})")
    if self.hidden_window and self.implementation not in ("factorized", "layerwise", "auto"):
      raise ValueError(f"attention.hidden_window={self.hidden_window} needs implementation "
                       f"'factorized', 'layerwise' or 'auto', got {self.implementation!r}")
    if self.layerwise_keep_outputs and self.implementation not in ("layerwise", "auto"):
      raise ValueError("attention.layerwise_keep_outputs=True needs implementation 'layerwise' "
                       f"or 'auto', got {self.implementation!r}")
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
    self.check_retrieval()

  def check_retrieval(self):
    if (isinstance(self.energy_steps, bool) or not isinstance(self.energy_steps, int)
        or self.energy_steps < 0):
      raise ValueError(f"attention.energy_steps={self.energy_steps!r}; allowed: an int >= 0")
    try:
      energy.resolve_separation(self.separation, self.separation_param)
    except ValueError as error:
      raise ValueError(f"attention.{error}") from None
    retrieves = self.energy_steps or self.separation != "softmax"
    if self.kind == "hopfield" and retrieves and self.implementation != "naive":
      raise ValueError(f"attention.energy_steps/separation with kind='hopfield' need "
                       f"implementation 'naive' (the kernels never form sep(H)), got "
                       f"{self.implementation!r}")

  @property
  def chain_start(self):
    """The h0 policy of attention.hopfield_attention: a random H_0 ("noise") is
    carried in as H_{n−1}, so its chains start like "zeros" on a restart."""
    return self.h0 if self.h0 in attention.CHAIN_STARTS else "zeros"


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
  causal: bool = False               # decoders: the stack ANDs the causal mask into the
  #                                    model's, and the Pallas kernels skip the tiles above
  #                                    the diagonal (no copy, no work)

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
    att = self.attention
    iterates = att.kind == "hopfield_energy" or att.energy_steps or att.separation != "softmax"
    if iterates and self.attention_dropout:
      raise ValueError(f"Hopfield retrieval (attention.kind={att.kind!r}, energy_steps="
                       f"{att.energy_steps}, separation={att.separation!r}) has no attention "
                       f"dropout; got attention_dropout={self.attention_dropout}")
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
  """Kind, the settings it reads and the residual rule actually used: every result
  names them."""
  kind = kinds.get(att.kind)
  if not skip_connections:
    residual = "none (x←u)"
  else:
    residual = att.residual if kind.residual == "form" else kind.residual
  symbols = {"alpha": "α", "alpha_hidden": "α′", "value_residual_lambda": "λ"}
  settings = [f"{symbol}={getattr(att, field):g}" for field, symbol in symbols.items()
              if field in kind.reads]
  if att.hyper_connections_dynamic:   # only a kind that reads it may set it (checked)
    settings.append("dynamic")
  return " ".join([att.kind, *settings, f"residual={residual}"])


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
