"""The fit report: one table per compiled step, a sweep summary, JSON."""

from __future__ import annotations

import dataclasses

from mha_jax import chips


def human_bytes(n):
  if n is None:
    return "?"
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n} B"


def _hbm_line(fit, chip):
  if fit.total_bytes is None:
    return f"did not compile: {fit.error}"
  if chip is not None:
    verdict = "fits" if fit.total_bytes <= chip.hbm_bytes else "does NOT fit"
    return (f"of {human_bytes(chip.hbm_bytes)} HBM ({chip.name}): {verdict} "
            f"({100 * fit.total_bytes / chip.hbm_bytes:.0f}%)")
  marks = [f"{c.name} {'yes' if fit.total_bytes <= c.hbm_bytes else 'no'}"
           for c in chips.CHIPS.values()]
  return "fits (CPU estimate) on: " + ", ".join(marks)


def format_fit(fit, chip, time_chip, mfu):
  """Per-device table. `chip`: the target's chip (TPU), or None for a CPU estimate
  measured against every chip of the table; `time_chip`'s peak sets the step time."""
  peak_chip = time_chip
  step_time = fit.model_flops / (mfu * fit.num_devices * peak_chip.peak_flops)
  lines = [
      f"{fit.label} on {fit.devices}",
      f"global batch {fit.global_batch} ({fit.per_device_batch} per batch shard), "
      f"remat {fit.remat_policy}, mesh {fit.mesh}",
      *([fit.attention_choice] if fit.attention_choice else []),
      f"  {'per device':<26}",
      f"  {'parameters':<26}{human_bytes(fit.params_bytes)}",
      f"  {'optimizer state':<26}{human_bytes(fit.opt_bytes)}",
      f"  {'temp':<26}{human_bytes(fit.temp_bytes)}",
      f"  {'total':<26}{human_bytes(fit.total_bytes)}  {_hbm_line(fit, chip)}",
  ]
  if fit.carry_bytes:
    lines.append(f"  {'attention carry':<26}{human_bytes(fit.carry_bytes)}  "
                 "(L × the state a layer hands the next, as jax.eval_shape measures it)")
  lines.append(f"  {'FLOPs/step (model)':<26}{fit.model_flops:.3e} global, "
               f"{fit.model_flops / fit.num_devices:.3e} per device"
               + (f"  [+ score updates {fit.mha_extra_flops:.2e}]" if fit.mha_extra_flops else ""))
  if fit.xla_flops_per_device is not None:
    lines.append(f"  {'FLOPs/step (XLA)':<26}{fit.xla_flops_per_device:.3e} per device "
                 f"(cost_analysis; {fit.xla_flops_per_device * fit.num_devices / fit.model_flops:.2f}"
                 "× model)")
  lines.append(f"  {f'step time at {mfu:.0%} MFU':<26}{step_time:.3g} s on {peak_chip.name} "
               f"-> {fit.items_per_step / step_time / fit.num_devices:.4g} {fit.item_name}/s "
               "per device")
  return "\n".join(lines)


def format_sweep(rows):
  """rows: (remat policy, largest fitting Fit or None, first failing batch or None)."""
  lines = ["remat policy    largest global batch that fits   total per device   next batch"]
  for policy, best, failed_batch in rows:
    largest = str(best.global_batch) if best else "none"
    total = human_bytes(best.total_bytes) if best else "-"
    lines.append(f"{policy:<16}{largest:<33}{total:<19}"
                 f"{failed_batch if failed_batch else '(all tried fit)'}")
  return "\n".join(lines)


def as_json(fit, mfu, peak_chip):
  row = dataclasses.asdict(fit)
  row.update(chip=peak_chip.name, hbm_bytes=peak_chip.hbm_bytes, mfu=mfu,
             step_time_s=fit.model_flops / (mfu * fit.num_devices * peak_chip.peak_flops))
  return row
