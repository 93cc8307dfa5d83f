"""Model factory: the train loop names a model only through `config.model.name`."""

from mha_jax.models import gpt, llama, vit

FAMILIES = {"vit": vit.create, "gpt2": gpt.create, "llama": llama.create}


def build_model(name, variant=None, **options):
  """E.g. build_model("gpt2", "small", attention={"kind": "hopfield", "alpha": 0.5})."""
  if name not in FAMILIES:
    raise ValueError(f"unknown model name {name!r}; allowed: {sorted(FAMILIES)}")
  create = FAMILIES[name]
  return create(**options) if variant is None else create(variant, **options)
