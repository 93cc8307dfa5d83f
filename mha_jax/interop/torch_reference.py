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
  kind: str = "standard"       # "standard" | "hopfield"
  alpha: float = 0.5           # α
  alpha_hidden: float = 0.5    # α′
  residual: str = "convex"     # "convex" | "scaled_branch" | "standard"
  h0: str = "zeros"            # "zeros" | "first_scores"


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
    if att.kind == "standard":
      h = s
    else:
      if h_prev_BxNxTxT is None:  # layer 1
        h_prev_BxNxTxT = torch.zeros_like(s) if att.h0 == "zeros" else s
      h = att.alpha_hidden * h_prev_BxNxTxT + (1 - att.alpha_hidden) * s
    logits = h if mask_TxT is None else h.masked_fill(~mask_TxT, float("-inf"))
    a = torch.softmax(logits, dim=-1)
    u = self.out((a @ v).transpose(1, 2).reshape(x_BxTxD.shape))
    if att.kind == "standard" or att.residual == "standard":
      x = x_BxTxD + u
    elif att.residual == "convex":
      x = att.alpha * x_BxTxD + (1 - att.alpha) * u
    elif att.residual == "scaled_branch":
      x = x_BxTxD + (1 - att.alpha) * u
    else:
      raise ValueError(f"residual={att.residual!r}")
    return x + self.feed_forward(self.mlp_norm(x)), (None if att.kind == "standard" else h)

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
