"""TPU ahead-of-time per-device memory of the GPT-2 small train step: standard
attention (flash, xla) against MHA materialised (naive) and layer-wise
(`implementation="layerwise"`, exact, O(L·T·D)) and what `auto` picks; a row
`auto_keep` is `auto` with `layerwise_keep_outputs`.

libtpu compiles for a v5e:2x2 slice from this CPU host (no TPU needed), batch
split over the 4 chips, bf16 compute, full remat. Per row: XLA's memory analysis
of the scanned stack (arguments + outputs − aliased + temp, per device), FLOPs
and bytes accessed (cost analysis; Pallas kernels count their own through their
CostEstimate) and the roofline time max(FLOPs / 197 TFLOP/s, bytes / 819 GB/s);
ratios against standard flash at the same length. XLA's cost analysis counts a
while loop's body once, i.e. one layer of the scanned stack, so by default
(`--roofline=unrolled`) FLOPs and bytes come from a second compile of the
unrolled stack (`scan_layers=False`), which counts all L layers
(`--roofline=none`: memory only). A configuration over v5e's 16 GiB HBM is a
row with the temporaries XLA says it needs ("does not fit"); any other compile
error stops the script. The JSON is rewritten after every row; the markdown
table it prints is the one in benchmarks/README.md.

    python benchmarks/layerwise_memory.py --lengths=4096 --rows=standard_flash,auto,auto_keep \
        --json_out=benchmarks/results/layerwise_memory_v5e.json
    python benchmarks/layerwise_memory.py --quick      # CI: 2 layers, width 128, T = 256
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time

os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")   # quiets a libtpu warning
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")        # other processes may hold it
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402
import flax  # noqa: E402
import jax  # noqa: E402
from jax.experimental import topologies  # noqa: E402

import _common  # noqa: E402
from mha_jax import kernels  # noqa: E402
from mha_jax.models import gpt  # noqa: E402
from mha_jax.train import sharding  # noqa: E402

flags.DEFINE_list("lengths", ["4096"], "sequence lengths")
flags.DEFINE_integer("batch", 8, "global batch (split over the 4 chips)")
flags.DEFINE_list("rows", ["standard_flash", "standard_xla", "layerwise", "auto", "naive"],
                  "standard_<impl>, an MHA implementation, or <impl>_keep (layerwise: "
                  "layerwise_keep_outputs)")
flags.DEFINE_enum("roofline", "unrolled", ["unrolled", "none"],
                  "FLOPs and bytes from a second compile of the unrolled stack (every layer; "
                  "the scanned one's cost analysis counts each layer loop's body once), or "
                  "none: memory only")
FLAGS = flags.FLAGS
PEAK_FLOPS, HBM_BYTES_PER_S = 197e12, 819e9
QUICK_SIZE = dict(num_layers=2, width=128, num_heads=2, vocab_size=512)


def tpu_mesh():
  topo = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2",
                                      chip_config_name="default", chips_per_host_bounds=(2, 2, 1),
                                      num_slices=1)
  return sharding.make_mesh(dict(data=4, fsdp=1, tensor=1), list(topo.devices))


def model_for(row, length, scan_layers=True):
  if row.startswith("standard_"):
    att = dict(kind="standard", implementation=row.removeprefix("standard_"))
  else:   # a "_keep" suffix: the layer-wise replay reuses the collect pass's outputs
    att = dict(kind="hopfield", alpha=0.5, alpha_hidden=0.5,
               implementation=row.removesuffix("_keep"),
               layerwise_keep_outputs=row.endswith("_keep"))
  size = QUICK_SIZE if FLAGS.quick else {}
  return gpt.create("small", max_len=length, dtype="bfloat16", remat_policy="full",
                    attention=att, scan_layers=scan_layers, **size)


def roofline(compiled):
  flops, bytes_accessed = _common.flops(compiled)
  return dict(flops=flops, bytes=bytes_accessed,
              roofline_ms=1e3 * max(flops / PEAK_FLOPS, bytes_accessed / HBM_BYTES_PER_S))


def measure(mesh, row, length):
  model = model_for(row, length)
  cfg = model.stack
  result = {"length": length, "row": row, "resolved": (
      kernels.resolve(cfg.attention, cfg.num_layers, FLAGS.batch, length, cfg.num_heads,
                      cfg.head_dim)
      if cfg.attention.kind == "hopfield" else cfg.attention.implementation)}
  start = time.time()
  try:
    compiled = _common.compiled_lm_gradient(mesh, model, length, FLAGS.batch)
  except Exception as e:  # noqa: BLE001 — only "does not fit" is a result; others re-raise
    needed = re.search(r"HLO temporaries \(([\d.]+)([GM])\)", str(e))
    if "RESOURCE_EXHAUSTED" not in str(e) or needed is None:
      raise
    scale = 1024 if needed.group(2) == "G" else 1
    result.update(fits=False, temp_mib=float(needed.group(1)) * scale)
    print(result, flush=True)
    return result
  stats = compiled.memory_analysis()
  result.update(
      fits=True, temp_mib=stats.temp_size_in_bytes / _common.MIB,
      per_device_mib=(stats.argument_size_in_bytes + stats.output_size_in_bytes
                      - stats.alias_size_in_bytes + stats.temp_size_in_bytes) / _common.MIB,
      pallas_kernels=compiled.as_text().count("tpu_custom_call"),
      compile_s=time.time() - start)
  if FLAGS.roofline == "unrolled":   # XLA's cost analysis counts a loop body once
    unrolled = model_for(row, length, scan_layers=False)
    result.update(roofline_from="unrolled", **roofline(
        _common.compiled_lm_gradient(mesh, unrolled, length, FLAGS.batch)))
  print(result, flush=True)
  return result


def add_ratios(rows):
  for row in rows:
    base = next((r for r in rows if r["length"] == row["length"]
                 and r["row"] == "standard_flash"), None)
    if base is None:
      continue
    row["temp_x"] = row["temp_mib"] / base["temp_mib"]
    if "per_device_mib" in row:
      row["memory_x"] = row["per_device_mib"] / base["per_device_mib"]
    if "roofline_ms" in row:
      row["roofline_x"] = row["roofline_ms"] / base["roofline_ms"]


COLUMNS = [("length", "T", "{}"), ("row", "attention", "{}"), ("resolved", "runs", "{}"),
           ("per_device_mib", "MiB/device", "{:.0f}"), ("memory_x", "mem ×", "{:.2f}"),
           ("temp_mib", "temp MiB", "{:.0f}"), ("temp_x", "temp ×", "{:.2f}"),
           ("fits", "fits", "{}"), ("roofline_ms", "roofline ms", "{:.1f}"),
           ("roofline_x", "time ×", "{:.2f}")]


def markdown(rows):
  """The README table (benchmarks/README.md): one line per row, ratios to flash."""
  header = "| T | attention | runs | MiB/device | mem × | temp MiB | TFLOP | roofline ms | time × |"
  lines = [header, "|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    cells = [str(row["length"]), row["row"], row["resolved"]]
    if row["fits"]:
      cells += [f"{row['per_device_mib']:.0f}", f"{row['memory_x']:.2f}",
                f"{row['temp_mib']:.0f}"]
      cells += ([f"{row['flops'] / 1e12:.2f}", f"{row['roofline_ms']:.1f}",
                 f"{row['roofline_x']:.2f}"] if "flops" in row else ["-", "-", "-"])
    else:
      cells += ["does not fit", "-", f"{row['temp_mib']:.0f}", "-", "-", "-"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  if FLAGS.quick:
    FLAGS.lengths, FLAGS.batch = ["256"], 4
  mesh = tpu_mesh()
  rows = []
  for length in map(int, FLAGS.lengths):
    for row in FLAGS.rows:
      rows.append(measure(mesh, row, length))
      add_ratios(rows)
      write_results(rows)   # after every row: a long run keeps what it measured
  print("\nGPT-2 small train step (loss gradient), v5e:2x2, bf16, full remat, per device")
  _common.print_table(rows, COLUMNS)
  print("\n" + markdown(rows))


def write_results(rows):
  _common.write_json({
      "rows": rows, "topology": "v5e:2x2", "global_batch": FLAGS.batch,
      "model": "gpt2 " + ("quick " + str(QUICK_SIZE) if FLAGS.quick else "small"),
      "remat_policy": "full", "dtype": "bfloat16", "peak_flops": PEAK_FLOPS,
      "hbm_bytes_per_s": HBM_BYTES_PER_S,
      "machine": platform.processor() or platform.machine(),
      "versions": {"jax": jax.__version__, "flax": flax.__version__},
      "command": " ".join(["python", "benchmarks/layerwise_memory.py"] + sys.argv[1:])})


if __name__ == "__main__":
  app.run(main)
