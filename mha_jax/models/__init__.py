"""Model factory: the train loop names a model only through `config.model.name`.

FAMILIES is the one list of model families; interop's converters are keyed by
the same names (they are also the HF config.json `model_type`s).
"""

from typing import Callable, NamedTuple

from mha_jax.models import gpt, llama, vit


class Family(NamedTuple):
  create: Callable
  model_class: type


FAMILIES = {"vit": Family(vit.create, vit.ViT), "gpt2": Family(gpt.create, gpt.GPT),
            "llama": Family(llama.create, llama.Llama)}


def build_model(name, variant=None, **options):
  """E.g. build_model("gpt2", "small", attention={"kind": "hopfield", "alpha": 0.5})."""
  if name not in FAMILIES:
    raise ValueError(f"unknown model name {name!r}; allowed: {sorted(FAMILIES)}")
  create = FAMILIES[name].create
  return create(**options) if variant is None else create(variant, **options)


def family_name(model):
  """The build_model name of a model instance."""
  for name, family in FAMILIES.items():
    if type(model) is family.model_class:
      return name
  raise TypeError(f"{type(model).__name__} is not one of the model families {sorted(FAMILIES)}")
