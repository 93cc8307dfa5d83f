"""`--topology` of `python -m mha_jax.aot`: a TPU slice shape XLA:TPU can compile for.

v5e and v6e slices are 2-D ("v5e:4x8"); v4 and v5p slices 3-D ("v4:2x2x4",
"v5p:2x2x1"). A host holds at most 2x2x1 chips, fewer in a smaller slice
("v5e:1x1" is one chip on one host).
"""

from __future__ import annotations

import importlib.util
import re

from mha_jax import chips

DIMENSIONS = {"v5e": 2, "v6e": 2, "v4": 3, "v5p": 3}
HOST_BOUNDS = (2, 2, 1)
EXAMPLES = "v5e:2x2, v5e:4x8, v6e:4x4, v4:2x2x1, v5p:2x2x4"


def parse(topology):
  """'v5e:4x8' → (Chip, (4, 8)); one ValueError line naming what is allowed."""
  name, _, shape = topology.partition(":")
  if name not in DIMENSIONS:
    raise ValueError(f"--topology={topology!r}: the chip must be one of "
                     f"{sorted(DIMENSIONS)} (e.g. {EXAMPLES})")
  if not re.fullmatch(r"[1-9]\d*(x[1-9]\d*)*", shape):
    raise ValueError(f"--topology={topology!r}: the shape must be positive integers joined "
                     f"by 'x' (e.g. {EXAMPLES})")
  dims = tuple(int(d) for d in shape.split("x"))
  if len(dims) != DIMENSIONS[name]:
    raise ValueError(f"--topology={topology!r}: {name} slices are {DIMENSIONS[name]}-D "
                     f"(e.g. {EXAMPLES})")
  return chips.chip(name), dims


def host_bounds(dims):
  """chips_per_host_bounds for a slice of shape `dims` (2-D or 3-D)."""
  padded = tuple(dims) + (1,) * (3 - len(dims))
  return tuple(min(d, bound) for d, bound in zip(padded, HOST_BOUNDS))


def libtpu_hint():
  """How to get TPU compilation, or '' when libtpu is installed."""
  if importlib.util.find_spec("libtpu") is None:
    return " (TPU compilation needs `pip install 'mha-jax[tpu]'`)"
  return ""
