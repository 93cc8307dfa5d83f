"""Training FLOPs per step, counted the way MaxText and levanter count them.

Model FLOPs = 3 × the forward matmuls (backward is twice the forward): every
weight matmul (2·m·n·k: Q/K/V/O, the MLP, the LM head or the patch embedding
and classifier) plus the two attention matmuls Q·Kᵀ and P·V over the full T×T
map (4·B·T²·N·d per layer; not halved for causal masks, since the naive path
computes the whole map). Norms, softmax, activations and the optimizer are not
counted, as in MaxText; they are why XLA's `cost_analysis` is a few % higher.

A kind's extra score work (MHA's H_n = α′·H_{n−1} + (1−α′)·S_n: 3 FLOPs per element
of the [B, N, T, T] map; RealFormer's H_{n−1} + S_n: 1) is read from the kinds table
(`score_flops_per_entry`, which adds 4·D per step of Hopfield retrieval), ×3 for
training. It is reported separately (`mha_extra`) and
not included in model FLOPs or MFU.
"""

from __future__ import annotations

import dataclasses

from mha_jax import kinds
from mha_jax.models import layers


@dataclasses.dataclass(frozen=True)
class StepFlops:
  model: float          # training FLOPs per step (global batch), MaxText-style
  mha_extra: float      # MHA's H update per step (0 for standard attention)
  items: int            # tokens (text) or images (vision) per step
  item_name: str        # "tokens" | "images"

  def mfu(self, step_time_s, num_chips, peak_flops_per_chip):
    return self.model / (step_time_s * num_chips * peak_flops_per_chip)


def stack_forward_flops(cfg: layers.StackConfig, batch, length):
  """(matmul FLOPs, MHA H-update FLOPs) of one forward pass through the stack."""
  tokens = batch * length
  qkv_out = 3 * cfg.num_heads * cfg.head_dim
  projections = 2 * tokens * cfg.width * (qkv_out + cfg.num_heads * cfg.head_dim)
  mlp_matrices = 3 if cfg.mlp == "swiglu" else 2
  mlp = 2 * tokens * cfg.width * cfg.mlp_dim * mlp_matrices
  scores = 4 * batch * length * length * cfg.num_heads * cfg.head_dim   # QKᵀ and PV
  per_entry = kinds.get(cfg.attention.kind).score_flops_per_entry(cfg.attention, cfg.head_dim)
  hidden = per_entry * batch * cfg.num_heads * length * length
  return cfg.num_layers * (projections + mlp + scores), cfg.num_layers * hidden


def training_flops(model, batch, modality, *, seq_len=None, channels=3) -> StepFlops:
  """StepFlops of one optimizer step on a global batch for a GPT / LLaMA / ViT."""
  cfg = model.stack
  if modality == "image":
    patches = (model.image_size // model.patch_size) ** 2
    length = patches + (1 if model.pool == "token" else 0)
    embed = 2 * batch * patches * model.patch_size ** 2 * channels * cfg.width
    head = 2 * batch * cfg.width * model.num_classes
    items, item_name = batch, "images"
  else:
    length = seq_len
    embed = 0   # a table lookup
    head = 2 * batch * length * cfg.width * model.vocab_size
    items, item_name = batch * length, "tokens"
  stack, hidden = stack_forward_flops(cfg, batch, length)
  return StepFlops(model=3.0 * (embed + stack + head), mha_extra=3.0 * hidden, items=items,
                   item_name=item_name)
