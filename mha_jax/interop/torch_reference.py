"""A literal PyTorch reading of Modern Hopfield Attention (spec §2), for comparing
frameworks. Written from the spec's equations, not from the JAX code; slow and
plain on purpose (no fused attention, no scan).

Per layer n, per head:

    s_n = scale · Q_n K_nᵀ                Q, K, V from Norm(x)
    H_n = α′ H_{n−1} + (1−α′) s_n         H_0 = 0 ("zeros") or H_1 = s_1 ("first_scores")
    A_n = softmax(mask(H_n))              the mask acts here only; H keeps raw scores
    u_n = W_O concat_heads(A_n V_n)
    x  ← α x + (1−α) u_n                  residual "convex" (or x + (1−α)u, or x + u)
    x  ← x + MLP(Norm(x))

Standard attention is the baseline block: A = softmax(mask(s)), x ← x + u, no H.
Hopfield retrieval ("hopfield_energy", and MHA with energy_steps > 0; mha_jax/energy.py
is the JAX side): ξ ← Kᵀ sep(scale·K ξ) `energy_steps` times from ξ = q (or from
ξ = Kᵀ sep(H_n) for MHA), then A = sep(scale·K ξ), x ← x + u; sep is one of the
separations below, written here from their definitions.
Norm is LayerNorm or RMSNorm, MLP GELU or SwiGLU, and Q, K optionally rotary
(half-split, as HF LLaMA), so GPT-2, ViT and LLaMA blocks can all be expressed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mha_jax.interop import common


@dataclasses.dataclass(frozen=True)
class Attention:
  kind: str = "standard"       # "standard" | "hopfield" | "hopfield_energy"
  alpha: float = 0.5           # α
  alpha_hidden: float = 0.5    # α′
  residual: str = "scaled_branch"  # "convex" | "scaled_branch" | "standard"
  h0: str = "zeros"            # "zeros" | "first_scores"
  energy_steps: int = 0        # Hopfield retrieval updates per layer
  separation: str = "softmax"  # softmax | sparsemax | entmax | polynomial | cubic
  separation_param: float | None = None   # entmax α, polynomial degree, cubic c₃


class _Entmax(torch.autograd.Function):
  """α-entmax (Peters et al., 2019): p = [(α−1)z − τ]₊^{1/(α−1)} with Σp = 1, τ by
  bisection; backward by the implicit-function Jacobian with g = p^{2−α} on the
  support (its 1/(α−1) cancels the chain rule's α−1): dz = g·dp − g·Σ(g·dp)/Σg."""

  @staticmethod
  def forward(ctx, z, alpha):
    z = (alpha - 1) * z
    high = z.max(-1, keepdim=True).values
    low = high - 1.0   # p ≤ 1 puts τ in [max − 1, max]
    for _ in range(100):
      tau = (low + high) / 2
      total = torch.clamp(z - tau, min=0).pow(1 / (alpha - 1)).sum(-1, keepdim=True)
      low, high = torch.where(total >= 1, tau, low), torch.where(total >= 1, high, tau)
    p = torch.clamp(z - (low + high) / 2, min=0).pow(1 / (alpha - 1))
    p = p / p.sum(-1, keepdim=True)
    ctx.save_for_backward(p)
    ctx.alpha = alpha
    return p

  @staticmethod
  def backward(ctx, dp):
    (p,) = ctx.saved_tensors
    g = torch.where(p > 0, p.pow(2 - ctx.alpha), torch.zeros_like(p))
    dz = g * dp
    dz = dz - g * dz.sum(-1, keepdim=True) / g.sum(-1, keepdim=True)
    return dz, None


def _sparsemax(z):
  """Euclidean projection onto the simplex (Martins & Astudillo, 2016), by sorting."""
  z_sorted = z.sort(-1, descending=True).values
  cumulative = z_sorted.cumsum(-1)
  ks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)
  support = (1 + ks * z_sorted > cumulative).sum(-1, keepdim=True)
  tau = (cumulative.gather(-1, support - 1) - 1) / support.to(z.dtype)
  return torch.clamp(z - tau, min=0)


def separate(u, mask, separation, param):
  """Weights over keys (the last axis) from scaled scores u; masked keys get 0."""
  fill = float("-inf") if separation in ("softmax", "cubic") else torch.finfo(u.dtype).min
  if separation == "cubic":
    c2, c3 = (0.0, 1 / 6) if param is None else (0.0, param)
    phi = u + c2 * u ** 2 + c3 * u ** 3
    masked = phi if mask is None else phi.masked_fill(~mask, fill)
    return torch.softmax(masked, -1) * (1 + 2 * c2 * u + 3 * c3 * u ** 2)
  masked = u if mask is None else u.masked_fill(~mask, fill)
  if separation == "softmax":
    return torch.softmax(masked, -1)
  if separation == "sparsemax":
    return _sparsemax(masked)
  if separation == "entmax":
    return _Entmax.apply(masked, 1.5 if param is None else param)
  degree = 3.0 if param is None else param
  relu = torch.clamp(masked, min=0)   # a row with no positive score gets all zeros
  total = relu.pow(degree).sum(-1, keepdim=True)
  safe = torch.where(total > 0, total, torch.ones_like(total))   # no NaN gradient at 0
  return torch.where(total > 0, relu.pow(degree - 1) / safe.pow((degree - 1) / degree), 0.0)


def retrieve(weights, k, v, scale, mask, att: Attention, steps):
  """From step-0 weights: `steps` updates ξ ← Kᵀ sep(scale·K ξ), then the readout."""
  for _ in range(steps):
    xi = weights @ k
    weights = separate(scale * xi @ k.transpose(-1, -2), mask, att.separation,
                       att.separation_param)
  return weights @ v


class Block(nn.Module):
  """Pre-norm block with separate Q/K/V Linear layers.

  GPT-2 / ViT shape: LayerNorm, GELU MLP (fc1, fc2), biases. LLaMA shape:
  norm="rmsnorm", mlp="swiglu" (gate, up, down), bias=False, rope_theta set.
  """

  def __init__(self, width, num_heads, mlp_dim, mlp="gelu", norm_eps=1e-6, norm="layernorm",
               bias=True, rope_theta=None):
    super().__init__()
    self.num_heads, self.mlp, self.rope_theta = num_heads, mlp, rope_theta
    make_norm = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}[norm]
    self.attention_norm = make_norm(width, eps=norm_eps)
    self.query, self.key, self.value = (nn.Linear(width, width, bias=bias) for _ in range(3))
    self.out = nn.Linear(width, width, bias=bias)
    self.mlp_norm = make_norm(width, eps=norm_eps)
    if mlp == "swiglu":
      self.gate = nn.Linear(width, mlp_dim, bias=bias)
      self.up = nn.Linear(width, mlp_dim, bias=bias)
      self.down = nn.Linear(mlp_dim, width, bias=bias)
    else:
      self.fc1 = nn.Linear(width, mlp_dim, bias=bias)
      self.fc2 = nn.Linear(mlp_dim, width, bias=bias)

  def heads(self, y_BxTxD):
    b, t, d = y_BxTxD.shape
    return y_BxTxD.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)

  def rope(self, x_BxNxTxD):
    """Rotary embedding, half-split: pair (x_i, x_{i+D/2}) rotated by t·θ^(−2i/D)."""
    t, d = x_BxNxTxD.shape[-2:]
    inv_freq = self.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = angle.cos().to(x_BxNxTxD.dtype), angle.sin().to(x_BxNxTxD.dtype)
    x1, x2 = x_BxNxTxD[..., : d // 2], x_BxNxTxD[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

  def forward(self, x_BxTxD, h_prev_BxNxTxT, mask_TxT, att: Attention):
    y = self.attention_norm(x_BxTxD)
    q, k, v = self.heads(self.query(y)), self.heads(self.key(y)), self.heads(self.value(y))
    if self.rope_theta is not None:
      q, k = self.rope(q), self.rope(k)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if att.kind in ("standard", "hopfield_energy"):
      h = s
    else:
      if h_prev_BxNxTxT is None:  # layer 1
        h_prev_BxNxTxT = torch.zeros_like(s) if att.h0 == "zeros" else s
      h = att.alpha_hidden * h_prev_BxNxTxT + (1 - att.alpha_hidden) * s
    scale = 1 / math.sqrt(q.shape[-1])
    a = separate(h, mask_TxT, att.separation, att.separation_param)
    u = self.out(retrieve(a, k, v, scale, mask_TxT, att, att.energy_steps)
                 .transpose(1, 2).reshape(x_BxTxD.shape))
    if att.kind in ("standard", "hopfield_energy") or att.residual == "standard":
      x = x_BxTxD + u
    elif att.residual == "convex":
      x = att.alpha * x_BxTxD + (1 - att.alpha) * u
    elif att.residual == "scaled_branch":
      x = x_BxTxD + (1 - att.alpha) * u
    else:
      raise ValueError(f"residual={att.residual!r}")
    carried = att.kind == "hopfield"
    return x + self.feed_forward(self.mlp_norm(x)), (h if carried else None)

  def feed_forward(self, y_BxTxD):
    if self.mlp == "swiglu":
      return self.down(F.silu(self.gate(y_BxTxD)) * self.up(y_BxTxD))
    approximate = "tanh" if self.mlp == "gelu_tanh" else "none"
    return self.fc2(F.gelu(self.fc1(y_BxTxD), approximate=approximate))


class Stack(nn.Module):
  """L blocks carrying (x, H) from the first layer to the last; block_kw as `Block`."""

  def __init__(self, num_layers, width, num_heads, mlp_dim, attention=Attention(), **block_kw):
    super().__init__()
    self.attention = attention
    self.layers = nn.ModuleList(Block(width, num_heads, mlp_dim, **block_kw)
                                for _ in range(num_layers))

  def forward(self, x_BxTxD, causal=False):
    """x after the last layer, and each layer's H (None for standard attention)."""
    t = x_BxTxD.shape[1]
    mask = torch.ones(t, t, dtype=torch.bool).tril() if causal else None
    h, hidden_states = None, []
    for block in self.layers:
      x_BxTxD, h = block(x_BxTxD, h, mask, self.attention)
      hidden_states.append(h)
    return x_BxTxD, hidden_states


def stack_table(ours, theirs, mlp="gelu", bias=True):
  """The two-way name table between a `Stack`'s layers ("{theirs}{i}.query.weight") and
  `LayerStack`'s loop layout ("{ours}layers_{i}/attention/query/kernel")."""
  mlp_modules = ("gate", "up", "down") if mlp == "swiglu" else ("fc1", "fc2")
  modules = ("attention_norm", "query", "key", "value", "out", "mlp_norm") + mlp_modules
  return common.linear_block(ours + "layers_{i}/", theirs + "{i}.", {m: m for m in modules},
                             use_bias=bias)


def stack_tensors_to_jax(tensors, num_heads):
  """{"layers.i.<module>.<weight|bias>": tensor} of a `Stack` (its parameters, or their
  gradients) → the loop-layout tree of `mha_jax.models.layers.LayerStack`."""
  arrays = {k: np.asarray(v.detach().numpy() if torch.is_tensor(v) else v)
            for k, v in tensors.items()}
  mlp = "swiglu" if "layers.0.gate.weight" in arrays else "gelu"
  table = common.Table(tuple(stack_table("", "layers.", mlp, "layers.0.query.bias" in arrays)))
  flat, _ = table.import_state_dict(arrays, len({k.split(".")[1] for k in arrays}), num_heads,
                                    "torch reference stack")
  return common.unflatten(flat)
