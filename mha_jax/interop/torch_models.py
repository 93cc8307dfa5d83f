"""Whole models around the PyTorch reference stack, loaded from Hugging Face models,
so MHA can run in PyTorch on pretrained weights (experiments/compare_pytorch.py).

Loading goes through the family tables: HF state dict → mha_jax paths (the family's
`TABLE`) → this module's names (the model's own `table`); `to_jax` reads the same
table the other way for parameters or their gradients.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from mha_jax.interop import common, gpt2, llama, torch_reference, vit
from mha_jax.interop.common import CONV, LINEAR, Row
from mha_jax.interop.torch_reference import Attention


class _Reference(nn.Module):
  """Loading shared by the three models; subclasses set FAMILY and `table`."""
  FAMILY = None

  @classmethod
  def from_hf(cls, hf_model, attention=Attention()):
    options = cls.FAMILY.model_options(hf_model.config.to_dict())
    state_dict = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    flat, _ = cls.FAMILY.TABLE.import_state_dict(
        state_dict, options["num_layers"], options["num_heads"], type(hf_model).__name__)
    return cls.from_flat(flat, options, attention)

  @classmethod
  def from_flat(cls, flat, options, attention=Attention()):
    """From {mha_jax loop-layout path: array} and mha_jax model options."""
    if "embedding/kernel" in flat:
      options = {**options, "channels": flat["embedding/kernel"].shape[2]}
    accepted = inspect.signature(cls.__init__).parameters
    model = cls(attention=attention, **{k: v for k, v in options.items() if k in accepted})
    state_dict = model.table().export_state_dict(flat, len(model.stack.layers), model.num_heads)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    return model.eval()

  def to_jax(self, tensors):
    """Named tensors of this module (params or grads) → mha_jax loop-layout tree."""
    arrays = {k: v.detach().numpy() for k, v in tensors.items()}
    flat, _ = self.table().import_state_dict(arrays, len(self.stack.layers), self.num_heads,
                                             type(self).__name__)
    return common.unflatten(flat)


class GPT2(_Reference):
  """GPT-2 with the reference stack and a tied head."""
  FAMILY = gpt2

  def __init__(self, num_layers, width, num_heads, mlp_dim, vocab_size, max_len,
               attention=Attention(), norm_eps=1e-5, mlp="gelu_tanh"):
    super().__init__()
    self.num_heads = num_heads
    self.wte, self.wpe = nn.Embedding(vocab_size, width), nn.Embedding(max_len, width)
    self.stack = torch_reference.Stack(num_layers, width, num_heads, mlp_dim, attention,
                                       mlp=mlp, norm_eps=norm_eps)
    self.ln_f = nn.LayerNorm(width, eps=norm_eps)

  def forward(self, tokens_BxT):
    x = self.wte(tokens_BxT) + self.wpe(torch.arange(tokens_BxT.shape[1]))
    return self.ln_f(self.stack(x, causal=True)[0]) @ self.wte.weight.T

  def table(self):
    return common.Table((Row("token_embedding/embedding", "wte.weight"),
                         Row("position_embedding", "wpe.weight"),
                         *common.norm("final_norm", "ln_f"),
                         *torch_reference.stack_table("decoder/", "stack.layers.")))


class ViT(_Reference):
  """Class-token ViT with the reference stack."""
  FAMILY = vit

  def __init__(self, num_layers, width, num_heads, mlp_dim, num_classes, image_size,
               patch_size, channels=3, attention=Attention(), mlp="gelu", norm_eps=1e-6):
    super().__init__()
    self.num_heads = num_heads
    self.patch = nn.Conv2d(channels, width, patch_size, stride=patch_size)
    self.cls = nn.Parameter(torch.zeros(1, 1, width))
    self.pos = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + 1, width))
    self.stack = torch_reference.Stack(num_layers, width, num_heads, mlp_dim, attention,
                                       mlp=mlp, norm_eps=norm_eps)
    self.norm = nn.LayerNorm(width, eps=norm_eps)
    self.head = nn.Linear(width, num_classes)

  def forward(self, images_BxCxHxW):
    x = self.patch(images_BxCxHxW).flatten(2).transpose(1, 2)  # row-major patches
    x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
    return self.head(self.norm(self.stack(x)[0])[:, 0])

  def table(self):
    return common.Table((Row("cls", "cls"), Row("position_embedding", "pos"),
                         *common.dense("embedding", "patch", CONV),
                         *common.norm("encoder_norm", "norm"),
                         *common.dense("head", "head", LINEAR),
                         *torch_reference.stack_table("encoder/", "stack.layers.")))


class Llama(_Reference):
  """LLaMA with the reference stack: RMSNorm, SwiGLU, rotary, no biases, untied head."""
  FAMILY = llama

  def __init__(self, num_layers, width, num_heads, mlp_dim, vocab_size, attention=Attention(),
               norm_eps=1e-6, rope_theta=10000.0):
    super().__init__()
    self.num_heads = num_heads
    self.embed = nn.Embedding(vocab_size, width)
    self.stack = torch_reference.Stack(num_layers, width, num_heads, mlp_dim, attention,
                                       mlp="swiglu", norm_eps=norm_eps, norm="rmsnorm",
                                       bias=False, rope_theta=rope_theta)
    self.norm = nn.RMSNorm(width, eps=norm_eps)
    self.lm_head = nn.Linear(width, vocab_size, bias=False)

  def forward(self, tokens_BxT):
    return self.lm_head(self.norm(self.stack(self.embed(tokens_BxT), causal=True)[0]))

  def table(self):
    return common.Table((Row("token_embedding/embedding", "embed.weight"),
                         Row("final_norm/scale", "norm.weight"),
                         Row("lm_head/kernel", "lm_head.weight", LINEAR),
                         *torch_reference.stack_table("decoder/", "stack.layers.", "swiglu",
                                                      bias=False)))
