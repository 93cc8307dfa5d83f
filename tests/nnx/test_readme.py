"""The README's "Using it from Flax NNX" example runs as written, and what it
computes is the Linen model's: its vmapped logits at each α′, from the weights the
NNX train step left, equal the Linen model's at that α′."""

import pathlib
import re

import numpy as np
from flax import nnx

from mha_jax import models

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def nnx_section_code():
  text = README.read_text()
  section = text[text.index("## Using it from Flax NNX"):]
  section = section[:section.index("\n## ", 1)]
  return re.findall(r"```python\n(.*?)```", section, re.S)[0]


def test_readme_nnx_example_runs_and_matches_linen():
  namespace = {}
  exec(compile(nnx_section_code(), str(README), "exec"), namespace)   # noqa: S102
  model, tokens, options = namespace["model"], namespace["tokens"], namespace["options"]
  assert np.isfinite(float(namespace["loss"]))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))   # after the train step
  logits_per_alpha = namespace["logits_per_alpha"]
  for i, alpha_hidden in enumerate(namespace["alpha_hidden"]):
    attention = dict(options["attention"], alpha_hidden=float(alpha_hidden))
    linen = models.build_model("gpt2", "small", **dict(options, attention=attention))
    expected, _ = linen.apply({"params": params}, tokens)
    np.testing.assert_allclose(logits_per_alpha[i], expected, atol=1e-5, rtol=0)
