"""PyTorch interop: Hugging Face GPT-2 / LLaMA / ViT and timm ViT checkpoints in and
out through one two-way name table per family (`common.Table`), and a literal
PyTorch reference of MHA (`torch_reference`, `torch_models`; need torch).

The converters need only NumPy and safetensors; torch is needed for .bin/.pt files.
"""

from mha_jax.interop.checkpoint_io import read_checkpoint, write_checkpoint
from mha_jax.interop.common import CheckpointError
from mha_jax.interop.pretrained import (export_pretrained, export_state_dict, load_pretrained,
                                        model_config_from_pretrained, model_from_pretrained,
                                        model_options_from_pretrained)

__all__ = ["CheckpointError", "export_pretrained", "export_state_dict", "load_pretrained",
           "model_config_from_pretrained", "model_from_pretrained",
           "model_options_from_pretrained", "read_checkpoint", "write_checkpoint"]
