"""Warm starts from, and exports to, PyTorch checkpoint directories.

`load_pretrained(directory, model)` is what the training loop's `init_from` calls.
The checkpoint's family (GPT-2, LLaMA, ViT / timm ViT) follows from the model; its
layer and head counts from its config.json; every tensor is checked against the
model's own parameter shapes (`jax.eval_shape(model.init, ...)`), so a checkpoint
that does not fit fails with one line naming the checkpoint key and both shapes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mha_jax import kinds, models
from mha_jax.interop import checkpoint_io, common, gpt2, llama, vit
from mha_jax.models import param_layout

# The interop side of each `models.FAMILIES` entry, by the same name.
CONVERTERS = {"gpt2": gpt2, "llama": llama, "vit": vit}
# Numerics that do not show in shapes: a mismatch loads fine and computes other logits.
NUMERICS = ("norm_eps", "mlp", "rope_theta")
CUSTOM_CODE_FILES = ("configuration_mha.py", "modeling_mha.py")


def table_for(family, timm=False):
  """The two-way name table of a family (HF naming, or timm for ViT)."""
  if timm and family != "vit":
    raise ValueError(f"timm=True is for ViT models only, not {family!r}")
  return vit.TIMM_TABLE if timm else CONVERTERS[family].TABLE


def model_options_from_pretrained(directory):
  """(build_model name, options) matching the checkpoint's config.json.

  E.g. `name, opts = model_options_from_pretrained("gpt2-local")` then
  `build_model(name, **opts, attention={"kind": "hopfield", "alpha": 0.5})`.
  """
  config = checkpoint_io.read_config(directory)
  if "architecture" in config:  # timm hub config
    return "vit", vit.timm_model_options(config)
  name = config.get("model_type", "").removeprefix("mha_")  # our custom-code exports
  if name not in CONVERTERS:
    raise ValueError(f"{directory}: config.json model_type={name!r}; supported: "
                     f"{sorted(CONVERTERS)} or a timm config with 'architecture'")
  options = CONVERTERS[name].model_options(config)
  if "auto_map" in config and "mha_jax_attention" in config:
    options["attention"] = dict(config["mha_jax_attention"])
  return name, options


def model_config_from_pretrained(directory, **overrides):
  """A training `config.model` dict ({"name": ..., **options}) shaped like the checkpoint."""
  name, options = model_options_from_pretrained(directory)
  return {"name": name, **options, **overrides}


def model_from_pretrained(directory, **overrides):
  """An mha_jax model shaped like the checkpoint; overrides (attention=..., scan_layers=...) win."""
  name, options = model_options_from_pretrained(directory)
  return models.build_model(name, **{**options, **overrides})


def _example_input(family, model, state_dict):
  if family == "vit":
    patch = state_dict.get("vit.embeddings.patch_embeddings.projection.weight",
                           state_dict.get("patch_embed.proj.weight"))
    channels = 3 if patch is None else patch.shape[1]
    return jnp.zeros((1, model.image_size, model.image_size, channels), jnp.float32)
  return jnp.zeros((1, 1), jnp.int32)


def expected_shapes(model, example_input):
  """{loop-layout path: ShapeDtypeStruct} of the model's params, without allocating them."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), example_input)["params"]
  return common.flat_shapes(nn.unbox(shapes))


def load_pretrained(directory, model, *, exclude=None):
  """Params for `model` from a local PyTorch checkpoint: unboxed, in the model's layout
  (scanned or not), in its param_dtype. Raises one-line ValueErrors for misfits.

  exclude: regex on mha_jax parameter paths ("decoder/layers_0/mlp/fc1/kernel",
  "head/kernel") left out of both sides, e.g. "^head/" to fine-tune a pretrained ViT
  on a new class count; the returned tree then lacks them (the caller initialises
  them fresh).
  """
  config, state_dict = checkpoint_io.read_checkpoint(directory)
  family = models.family_name(model)
  options = CONVERTERS[family].model_options(config) if config else {}
  _warn_numerics(options, model, directory)
  table = table_for(family, timm=family == "vit" and vit.is_timm(state_dict))
  params, origin = table.import_state_dict(
      state_dict, options.get("num_layers", model.stack.num_layers),
      options.get("num_heads", model.stack.num_heads), source=directory)
  expected = expected_shapes(model, _example_input(family, model, state_dict))
  if exclude:
    skip = re.compile(exclude)
    params = {p: v for p, v in params.items() if not skip.search(p)}
    expected = {p: v for p, v in expected.items() if not skip.search(p)}
  tree = common.unflatten(common.check_against(params, origin, expected, directory))
  if model.stack.scan_layers:
    return param_layout.stack_layer_params(tree)
  return jax.tree.map(jnp.asarray, tree)


def _warn_numerics(options, model, directory):
  stack = dataclasses.asdict(model.stack)
  for key in NUMERICS:
    if key in options and options[key] != stack[key]:
      warnings.warn(f"{directory}: checkpoint has {key}={options[key]!r} but the model "
                    f"{key}={stack[key]!r}; logits will differ from the PyTorch model",
                    stacklevel=3)


def export_state_dict(params, model, *, timm=False):
  """(config.json dict, float32 state dict) of params in either layout, boxed or not."""
  family = models.family_name(model)
  flat = {path: np.asarray(value, np.float32)
          for path, value in common.flatten(nn.unbox(params)).items()}
  state_dict = table_for(family, timm).export_state_dict(
      flat, model.stack.num_layers, model.stack.num_heads)
  if family == "vit":
    return vit.export_config(model, flat["embedding/kernel"].shape[2], timm=timm), state_dict
  return CONVERTERS[family].export_config(model), state_dict


def needs_custom_code(attention):
  """Whether the stock HF classes would compute something else: any kind but standard,
  or a score scale other than their 1/√head_dim."""
  return attention.kind != "standard" or attention.score_scale is not None


def family_is_text(model):
  return models.family_name(model) in ("gpt2", "llama")


def export_pretrained(params, model, directory, *, timm=False, weights_format="safetensors",
                      eos_id=None):
  """Params (either layout, boxed or not) → a PyTorch checkpoint directory. Standard
  attention: plain HF (or, timm=True, timm). MHA, RealFormer and a non-default score
  scale: an HF custom-code model (hf_code/*.py beside the weights, `auto_map` and
  "mha_jax_attention" in config.json) that `AutoModelFor...from_pretrained(directory,
  trust_remote_code=True)` runs; timm refuses them. Text models: config.json's
  bos/eos/pad_token_id are `eos_id` (the run's end-of-text id; None when unknown,
  never an id outside the vocabulary)."""
  config, state_dict = export_state_dict(params, model, timm=timm)
  attention = model.stack.attention
  if needs_custom_code(attention):
    if timm:
      raise ValueError(f"{model.stack.describe_attention()} with score_scale="
                       f"{attention.score_scale} does not export to timm (no custom code): "
                       "export with timm=False for the Hugging Face custom-code model")
    config["mha_jax_attention"] = dataclasses.asdict(attention)
    _as_custom_code(config, model)
  if eos_id is not None and not 0 <= eos_id < model.vocab_size:
    raise ValueError(f"eos_id={eos_id} is outside the vocabulary [0, {model.vocab_size})")
  if not timm and family_is_text(model):
    config.update(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
  checkpoint_io.write_checkpoint(directory, config, state_dict, weights_format)
  for name in CUSTOM_CODE_FILES if "auto_map" in config else ():
    shutil.copy(os.path.join(os.path.dirname(__file__), "hf_code", name), directory)
  return directory


def _as_custom_code(config, model):
  """config.json of the hf_code subclass of the stock class (model_type "mha_<family>")."""
  att = model.stack.attention
  for bad, setting in ((not kinds.get(att.kind).hf_export, f"attention.kind={att.kind!r}"),
                       (att.h0 == "noise", "attention.h0='noise' (a JAX random draw)"),
                       (att.energy_steps or att.separation != "softmax",
                        "Hopfield retrieval (attention.energy_steps / separation)"),
                       (att.hidden_window, f"attention.hidden_window={att.hidden_window}"),
                       (not model.stack.skip_connections, "skip_connections=False")):
    if bad:
      raise ValueError(f"{setting} does not export to transformers")
  stock = config["architectures"][0]
  auto = "AutoModelForImageClassification" if stock.startswith("ViT") else "AutoModelForCausalLM"
  config_class = {"gpt2": "MhaGPT2Config", "llama": "MhaLlamaConfig", "vit": "MhaViTConfig"}
  family = config["model_type"]
  config.update(model_type=f"mha_{family}", architectures=[f"Mha{stock}"],
                auto_map={"AutoConfig": f"configuration_mha.{config_class[family]}",
                          auto: f"modeling_mha.Mha{stock}"})
