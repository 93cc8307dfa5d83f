"""Accelerator facts: memory and peak bf16 FLOP/s per chip, and TPU slice shapes.

Used by the fit report (`mha_jax.aot`), MFU in the training logs and the launch
recipes (how many hosts, hence JAX processes, a TPU slice has). Figures are the
vendors' published per-chip numbers (dense bf16, no sparsity).
"""

from __future__ import annotations

import dataclasses
import re

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int
  peak_flops: float      # dense bf16 FLOP/s per chip
  chips_per_host: int    # hosts of a multi-host slice hold this many chips
  cores_in_name: bool = False   # v4-32 / v5p-8 count TensorCores (2 per chip)


CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, 4, cores_in_name=True),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 4),
    "v5p": Chip("v5p", 95 * GiB, 459e12, 4, cores_in_name=True),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 4),
    "H100": Chip("H100", 80 * 10**9, 989e12, 8),
    "H200": Chip("H200", 141 * 10**9, 989e12, 8),
}
# gcloud's accelerator-type prefixes → our chip names.
_GCLOUD_NAMES = {"v4": "v4", "v5litepod": "v5e", "v5e": "v5e", "v5p": "v5p", "v6e": "v6e"}


def chip(name: str) -> Chip:
  if name not in CHIPS:
    raise ValueError(f"unknown chip {name!r}; allowed: {sorted(CHIPS)}")
  return CHIPS[name]


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  accelerator_type: str   # as gcloud spells it, e.g. "v5litepod-16"
  chip: Chip
  num_chips: int

  @property
  def num_hosts(self) -> int:
    # Single-host slices hold up to 8 chips (v5e-8, v6e-8); larger ones 4 per host.
    if self.num_chips <= 8 and not self.chip.cores_in_name:
      return 1
    return max(1, self.num_chips // self.chip.chips_per_host)


def tpu_slice(accelerator_type: str) -> TpuSlice:
  """'v5litepod-16' (or 'v5e-16'), 'v4-32', 'v5p-8', 'v6e-16' → its chips and hosts."""
  match = re.fullmatch(r"(v4|v5litepod|v5e|v5p|v6e)-(\d+)", accelerator_type)
  if not match:
    raise ValueError(f"accelerator type {accelerator_type!r}; expected e.g. v5litepod-16, "
                     f"v4-32, v5p-8, v6e-16")
  the_chip = CHIPS[_GCLOUD_NAMES[match[1]]]
  count = int(match[2])
  num_chips = count // 2 if the_chip.cores_in_name else count
  gcloud_prefix = "v5litepod" if the_chip.name == "v5e" else match[1]
  return TpuSlice(f"{gcloud_prefix}-{count}", the_chip, max(num_chips, 1))


# device_kind strings as JAX reports them → our chip names (first match wins).
_DEVICE_KINDS = (("v5 lite", "v5e"), ("v5e", "v5e"), ("v5p", "v5p"), ("v5", "v5p"),
                 ("v6", "v6e"), ("v4", "v4"), ("h200", "H200"), ("h100", "H100"))


def chip_for_device(device) -> Chip | None:
  """The Chip of a jax Device ("TPU v5 lite", "NVIDIA H100 80GB HBM3", ...); None
  for CPUs and chips not in the table (no MFU then)."""
  kind = getattr(device, "device_kind", "").lower()
  if getattr(device, "platform", "") == "cpu":
    return None
  return next((CHIPS[name] for key, name in _DEVICE_KINDS if key in kind), None)
