"""The README's fit table: GPT-2 S/M/L/XL (T=1024), LLaMA 60m…1b (T=1024, 2048, 8192),
ViT-B/L (224²), standard attention (`flash`, the platform's flash kernel) vs MHA
(`auto`: materialised H where its saved H is within a quarter of HBM, the layer-wise
O(L·T·D) path where not), compiled by `python -m mha_jax.aot` for TPU topologies
(needs libtpu; nothing runs on a TPU).

  python benchmarks/fit_table.py --out=runs/fit --topologies=v5e:4x4,v5p:2x2x1   # compile
  python benchmarks/fit_table.py --out=runs/fit --table                          # markdown
  python benchmarks/fit_table.py --quick --json_out=fit.json    # CI: one small cell, v5e:2x2

Each entry compiles the full train step (bf16 compute, FSDP over every chip) with
remat none, then dots_no_batch, then full, until one fits: XLA:TPU refuses (in
seconds) to compile a step that cannot fit HBM, naming the bytes it needed. Entries already in --out
are skipped, so an interrupted run continues. One compile takes minutes on 2 CPU
cores; run one at a time. --quick compiles one small cell (the GPT-2 smoke
model) with XLA:TPU's memory-check estimate (aot.fit.target_devices quick=True)
into a temporary --out, and writes every cell's verdict and the table as JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

from absl import app, flags

import _common

flags.DEFINE_string("out", "runs/fit", "folder of the per-entry JSON files")
flags.DEFINE_list("topologies", ["v5e:4x4", "v5p:2x2x1"], "TPU topologies to compile for")
flags.DEFINE_bool("table", False, "print the markdown table of what --out holds")
FLAGS = flags.FLAGS
ROOT = pathlib.Path(__file__).resolve().parents[1]
GiB = 2**30

# (row name, config spec, per-chip batch); bf16 everywhere.
MODELS = [
    ("GPT-2 S T=1024", "gpt2_wikitext103.py:size=small", 4),
    ("GPT-2 M T=1024", "gpt2_wikitext103.py:size=medium", 4),
    ("GPT-2 L T=1024", "gpt2_wikitext103.py:size=large", 4),
    ("GPT-2 XL T=1024", "gpt2_wikitext103.py:size=xl", 4),
    *[(f"LLaMA {size} T={t}", f"llama_lm.py:size={size},seq_len={t}", max(1, 4 * 1024 // t))
      for t in (1024, 2048, 8192) for size in ("60m", "130m", "350m", "1b")],
    ("ViT-B/16 224²", "vit_imagenet.py:variant=B/16", 32),
    ("ViT-L/16 224²", "vit_imagenet.py:variant=L/16", 32),
]
REMAT_POLICIES = ("none", "dots_no_batch", "full")
QUICK_POLICIES = ("none", "full")
# --quick: one cell that compiles in a minute or two on a CPU host.
SMOKE_MODELS = [("GPT-2 smoke", "gpt2_wikitext103.py:smoke", 4)]
SMOKE_TOPOLOGY = "v5e:2x2"


def quick_estimate():
  """Judge by XLA:TPU's memory check instead of full compiles (aot.fit.target_devices
  quick=True): with --quick, or FIT_TABLE_QUICK set for the whole table."""
  return FLAGS.quick or bool(os.environ.get("FIT_TABLE_QUICK"))
# name: (config argument, attention.implementation)
ATTENTION = {"standard": ("attention=standard", "flash"),
             "MHA": ("attention=hopfield,alpha=0.5", "auto")}


def entry_name(row, attention, topology):
  safe = "".join(c if c.isascii() and c.isalnum() else "_"
                 for c in f"{row}_{attention}_{topology}")
  return f"{safe}.json"


def compile_entry(out, row, spec, per_chip, attention, topology):
  """What `python -m mha_jax.aot --config=configs/<spec>,<attention argument>
  --config.model.attention.implementation=<flash | auto> --config.mesh.data=1
  --config.mesh.fsdp=-1 --config.batch_size=<per_chip × chips> --config.model.dtype=bfloat16
  --topology=<topology> --remat=none --noxla_flops --json=<entry>` does, in this
  process (one JAX start-up for the whole table)."""
  import time
  from mha_jax.aot import fit, report
  from mha_jax import config_util
  path = out / entry_name(row, attention, topology)
  if path.exists():
    return
  quick = quick_estimate()
  devices, label, chip = fit.target_devices(topology=topology, quick=quick)
  argument, implementation = ATTENTION[attention]
  config = config_util.load_config(f"{ROOT}/configs/{spec},{argument}")
  config.model.attention.implementation = implementation
  config.mesh = dict(data=1, fsdp=-1, tensor=1)
  config.batch_size = per_chip * len(devices)
  config.model.dtype = "bfloat16"
  tried = []
  for policy in QUICK_POLICIES if quick else REMAT_POLICIES:   # the first that fits
    config.model.remat_policy = policy
    start = time.perf_counter()
    result = fit.measure(config, devices, label, hbm_bytes=chip.hbm_bytes, with_xla_flops=False)
    result.label = f"{row} {attention}"
    print(f"{result.label} on {topology}, remat {policy}: fits={result.fits} "
          f"total={result.total_bytes} ({time.perf_counter() - start:.0f} s)", flush=True)
    tried.append(report.as_json(result, 0.4, chip))
    if result.fits:
      break
  path.write_text(json.dumps(tried[::-1], indent=2))   # the verdict first, then what failed


# v4-32 and v5e-16 both have 16 chips: the same program, sharded 16 ways, on chips with
# twice the HBM. Where v4 was not compiled, its cell is derived from the v5e compile:
# what fits in 16 GiB fits in 32 GiB; a v5e refusal names the bytes it needed.
DERIVED = {"v4:2x2x4": "v5e:4x4"}


def _load(out, row, attention, topology):
  path = out / entry_name(row, attention, topology)
  return json.loads(path.read_text())[0] if path.exists() else None


def table(out, topologies, models=MODELS):
  """Markdown: per topology, standard and MHA: ✓/✗, the remat policy, bytes per chip."""
  header = ("| model | batch per chip | MHA's attention state per chip (H: L × one layer's; "
            "layerwise: the q, k buffers once) | "
            + " | ".join(f"{t} standard | {t} MHA" for t in topologies) + " |")
  lines = [header, "|" + "---|" * (3 + 2 * len(topologies))]
  for row, _, per_chip in models:
    mha = next((r for t in topologies for r in [_load(out, row, "MHA", t)] if r), None)
    cells = [row, str(per_chip), f"{mha['carry_bytes'] / GiB:.1f} GiB" if mha else "–"]
    for topology in topologies:
      for attention in ATTENTION:
        result = _load(out, row, attention, topology)
        if result is None and topology in DERIVED:
          cells.append(_derived_cell(_load(out, row, attention, DERIVED[topology]), topology))
        else:
          cells.append(_cell(result))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _derived_cell(source, topology):
  """A v4-32 verdict from the v5e-16 compile (marked †)."""
  if source is None:
    return "–"
  from mha_jax import chips
  hbm = chips.chip(topology.split(":")[0]).hbm_bytes
  total, policy = source["total_bytes"], _policy(source)
  if source["fits"]:
    return f"✓ {policy}†"
  if total and total <= hbm:
    return f"✓? needs {total / GiB:.0f} GiB at {policy}†"
  return f"✗ needs {total / GiB:.0f} GiB ({policy})†" if total else "–"


def _policy(result):
  """The remat policy, and for MHA `auto` the implementation it chose."""
  choice = result.get("attention_choice", "")
  chosen = f" · {choice.split('→ ')[1].split(' ')[0]}" if choice else ""
  return result["remat_policy"] + chosen


def _cell(result):
  """'✓ dots_no_batch 9.1 GiB (57%)' / '✗ needs 31 GiB (full)' / '–' (not compiled);
  ‡ = quick estimate (XLA's memory check, not a full compile); MHA's policy is
  followed by what `auto` chose (· layerwise)."""
  if result is None:
    return "–"
  total, policy = result["total_bytes"], _policy(result)
  quick = "‡" if result["error"].startswith("quick") else ""
  if result["fits"]:
    share = total / result["hbm_bytes"]
    mark = "✓?" if quick and share > 0.9 else "✓"   # quick estimates run a few % low
    return f"{mark} {policy}: {total / GiB:.1f} GiB{quick} ({100 * share:.0f}%)"
  return f"✗ needs {total / GiB:.0f} GiB{quick} ({policy})" if total else f"✗ ({policy})"


def verdicts(out, topologies, models):
  """One JSON row per compiled cell: its verdict and the table cell shown for it."""
  rows = []
  for row, _, per_chip in models:
    for topology in topologies:
      for attention in ATTENTION:
        result = _load(out, row, attention, topology)
        if result is not None:
          rows.append(dict(model=row, attention=attention, topology=topology,
                           per_chip_batch=per_chip, cell=_cell(result),
                           **{key: result[key] for key in ("fits", "remat_policy",
                                                           "total_bytes", "hbm_bytes")}))
  return rows


def compile_all(out, topologies, models):
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  for topology in topologies:
    for row, spec, per_chip in sorted(models, key=lambda m: _priority(m[0])):
      for attention in ATTENTION:
        compile_entry(out, row, spec, per_chip, attention, topology)


def compile_and_report(out, topologies, models):
  if not FLAGS.table:
    compile_all(out, topologies, models)
  markdown = table(out, topologies, models)
  print(markdown)
  _common.write_json({"rows": verdicts(out, topologies, models), "table": markdown})


def main(argv):
  del argv
  if FLAGS.quick:   # a throw-away --out: the smoke cell is not a table entry
    with tempfile.TemporaryDirectory() as tmp:
      compile_and_report(pathlib.Path(tmp), [SMOKE_TOPOLOGY], SMOKE_MODELS)
    return
  out = pathlib.Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  compile_and_report(out, FLAGS.topologies, MODELS)


def _priority(row):
  """The largest models first: they decide what a pod can train (one compile takes
  minutes on 2 busy CPU cores, so a run may be cut short)."""
  order = ["GPT-2 S", "GPT-2 M", "GPT-2 L", "GPT-2 XL", "LLaMA 1b T=8192", "LLaMA 1b T=2048",
           "LLaMA 1b T=1024", "LLaMA 350m T=8192", "ViT-L", "ViT-B", "LLaMA 350m T=2048",
           "LLaMA 350m T=1024"]
  return next((i for i, prefix in enumerate(order) if row.startswith(prefix)), len(order))


if __name__ == "__main__":
  app.run(main)
