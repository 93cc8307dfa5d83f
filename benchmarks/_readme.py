"""The tables of benchmarks/README.md and the README's fit table, rendered from the
committed artefacts in benchmarks/results/ (one JSON per measured run, written by the
benchmark's own --json_out, with its provenance: command, CPU, load, versions, date).

    python benchmarks/_readme.py            # rewrite the tables in both READMEs
    python benchmarks/_readme.py --check    # exit 1 if a table differs from its artefact

In a README a table sits between `<!-- table NAME -->` and `<!-- end table -->`;
NAME is a key of TABLES. tests/kernels/test_benchmark_readme.py checks that every
table matches its artefact and that no other numeric table is in benchmarks/README.md.
"""

from __future__ import annotations

import json
import pathlib
import re
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "benchmarks" / "README.md"
DOCS = (README, ROOT / "README.md")
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- table (\S+) -->\n)(.*?)(<!-- end table -->)", re.S)


def repeated_rows(rows, group, variant, baseline):
  """Rows measured more than once in one run (a palindromic order, e.g. A B C C B A,
  cancels a drifting load): one row per `variant` within each `group`, times
  averaged, each divided by the baseline variant's average in the same group."""
  out = []
  groups = {}
  for row in rows:
    groups.setdefault(tuple(row[k] for k in group), {}).setdefault(row[variant], []).append(row)
  for key, by_variant in groups.items():
    base = by_variant[baseline]
    for name, runs in by_variant.items():
      merged = {**dict(zip(group, key)), variant: name, "runs": len(runs)}
      for field in ("step_s", "forward_s", "temp_mib", "mfu", "jax_s"):
        values = [r[field] for r in runs if r.get(field) is not None]
        if values:
          merged[field] = statistics.mean(values)
          merged[field + "_x"] = merged[field] / statistics.mean(r[field] for r in base)
      out.append(merged)
  return out


def step_cost(data):
  return repeated_rows(data["rows"], ("model", "length", "batch", "remat"), "implementation",
                       "standard")


STEP_TARGETS = {"naive": 1.05, "factorized": 1.15}   # issue 21: × standard's train step


def step_cost_summary(data):
  """Each MHA row against its target, and the spread between one variant's runs."""
  parts = []
  for row in step_cost(data):
    target = STEP_TARGETS.get(row["implementation"])
    if target:
      verdict = "met" if row["step_s_x"] <= target else "missed"
      parts.append(f"{row['implementation']} {row['step_s_x']:.2f}× (target ≤ {target}: "
                   f"{verdict})")
  times = {}
  for row in data["rows"]:
    times.setdefault(row["implementation"], []).append(row["step_s"])
  spread = max(max(t) / min(t) - 1 for t in times.values())
  return (f"Against the targets: {'; '.join(parts)}. The two runs of one variant differ by "
          f"up to {spread:.0%}, so a difference smaller than that is noise, not a ranking.")


def layerwise_summary(data):
  """Exact MHA (layerwise / auto rows, kept outputs or not) against issue 21's TPU
  targets, per length."""
  parts = []
  for row in data["rows"]:
    if row["row"].removesuffix("_keep") in ("layerwise", "auto") and row.get("fits"):
      memory = "met" if row["memory_x"] <= 1.2 else "missed"
      part = f"T={row['length']} {row['row']}: memory {row['memory_x']:.2f}× (≤ 1.2: {memory})"
      if row.get("roofline_x") is not None:
        time = "met" if row["roofline_x"] <= 2.0 else "missed"
        part += f", roofline {row['roofline_x']:.2f}× (≤ 2: {time})"
      parts.append(part)
  return "Against the targets: " + "; ".join(parts) + "."


def fit_summary(data):
  """Issue 21's fit target, from the compiled cells: MHA fits wherever standard does."""
  cells = {}
  for row in data["rows"]:
    cells.setdefault((row["model"], row["topology"]), {})[row["attention"]] = row
  both = [pair for pair in cells.values() if len(pair) == 2]
  standard_fits = [pair for pair in both if pair["standard"]["fits"]]
  misses = [f"{p['MHA']['model']} on {p['MHA']['topology']}" for p in standard_fits
            if not p["MHA"]["fits"]]
  ratios = [p["MHA"]["total_bytes"] / p["standard"]["total_bytes"] for p in standard_fits
            if p["MHA"]["fits"] and p["MHA"]["remat_policy"] == p["standard"]["remat_policy"]]
  verdict = "met" if not misses else "missed: " + ", ".join(misses)
  return (f"Against the target (MHA fits wherever standard attention fits): MHA fits in "
          f"{len(standard_fits) - len(misses)} of the {len(standard_fits)} compiled cells where "
          f"standard fits ({verdict}); at the same remat policy MHA needs "
          f"{min(ratios):.2f}–{max(ratios):.2f}× standard's bytes per chip.")


def torch_summary(data):
  return "Against the target (JAX ≤ 1.0× `torch.compile`): " + "; ".join(
      f"{row['kind']} {row['jax_over_compile']:.2f}×" for row in data["rows"]) + "."


LAYERWISE_ARTEFACTS = tuple(f"layerwise_memory_v5e{suffix}.json"
                            for suffix in ("", "_8192", "_16384", "_32768"))
# name: (artefact or artefacts (their rows concatenated), how its rows become table rows, columns (key, header, format),
#        the sentence under the table or None)
TABLES = {
    "step_cost_cpu": ("step_cost_cpu.json", step_cost, [
        ("model", "model", "{}"), ("length", "T", "{}"), ("batch", "B", "{}"),
        ("remat", "remat", "{}"), ("implementation", "attention", "{}"), ("runs", "runs", "{}"),
        ("step_s", "step s", "{:.3f}"), ("step_s_x", "step ×", "{:.2f}"),
        ("forward_s_x", "fwd ×", "{:.2f}"), ("temp_mib", "XLA temp MiB", "{:.0f}"),
        ("temp_mib_x", "temp ×", "{:.2f}"), ("mfu", "MFU", "{:.0%}")], step_cost_summary),
    "torch_vs_jax_cpu": ("torch_vs_jax_cpu.json", lambda data: data["rows"], [
        ("kind", "attention", "{}"), ("jax_s", "JAX s", "{:.3f}"),
        ("torch_eager_s", "torch eager s", "{:.3f}"),
        ("torch_compile_s", "torch.compile s", "{:.3f}"),
        ("jax_over_eager", "JAX/eager", "{:.2f}"), ("jax_over_compile", "JAX/compile", "{:.2f}")],
        torch_summary),
    "layerwise_memory_v5e": (LAYERWISE_ARTEFACTS, lambda data: data["rows"], [
        ("length", "T", "{}"), ("row", "attention", "{}"), ("resolved", "runs", "{}"),
        ("per_device_mib", "MiB/device", "{:.0f}"), ("memory_x", "mem ×", "{:.2f}"),
        ("temp_mib", "temp MiB", "{:.0f}"), ("tflop", "TFLOP", "{:.2f}"),
        ("roofline_ms", "roofline ms", "{:.1f}"), ("roofline_x", "time ×", "{:.2f}")],
        layerwise_summary),
    "attention_cost_cpu": ("attention_cost_cpu.json", lambda data: data["rows"], [
        ("length", "T", "{}"), ("remat", "remat", "{}"), ("time_ratio", "time MHA/std", "{:.2f}"),
        ("standard_temp_mib", "temp MiB std", "{:.1f}"),
        ("mha_temp_mib", "temp MiB MHA", "{:.1f}"),
        ("memory_ratio", "mem ×", "{:.2f}"), ("h_mib", "L·B·N·T²·4 B (MiB)", "{:.0f}")], None),
    "fit_table": ("fit_table.json", None, None, fit_summary),   # fit_table.py renders it
    "sweep_vmap_cpu": ("sweep_vmap_cpu.json", lambda data: data["rows"], [
        ("runs", "K runs", "{}"), ("vmapped_s", "vmapped s/step", "{:.4f}"),
        ("sequential_s", "one by one s/step", "{:.4f}"), ("speedup", "speed-up", "{:.2f}"),
        ("max_param_diff", "max Δparam", "{:.1e}")], None),
}


def render(name):
  """The Markdown of table `name`: header, rows, and a provenance line."""
  artefacts, to_rows, columns, summary = TABLES[name]
  artefacts = (artefacts,) if isinstance(artefacts, str) else artefacts
  datas = [json.loads((RESULTS / a).read_text()) for a in artefacts]
  if to_rows is None:   # the artefact holds its own Markdown table
    data, lines = datas[0], [datas[0]["table"]]
  else:
    data = {"rows": [row for d in datas for row in to_rows(d)]}
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in data["rows"]:
      lines.append("| " + " | ".join(cell(row, key, fmt) for key, _, fmt in columns) + " |")
  if summary:
    lines += ["", summary(datas[0] if len(datas) == 1 else data)]
  lines += [""] + [provenance_line(a, d) for a, d in zip(artefacts, datas)]
  return "\n".join(lines) + "\n"


def cell(row, key, fmt):
  if key == "tflop":
    return "–" if row.get("flops") is None else fmt.format(row["flops"] / 1e12)
  if key == "per_device_mib" and row.get("fits") is False:
    return "does not fit"
  return "–" if row.get(key) is None else fmt.format(row[key])


def provenance_line(artefact, data):
  p = data.get("provenance")
  if not p:   # an artefact from before benchmarks wrote their provenance
    versions = ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items())
    return f"From `benchmarks/results/{artefact}`: `{data['command']}` — {versions}."
  versions = ", ".join(f"{k} {v}" for k, v in p["versions"].items())
  load = ", ".join(f"{x:.1f}" for x in p["load_average"])
  note = f" Note: {p['note']}." if p.get("note") else ""
  return (f"From `benchmarks/results/{artefact}`: `{p['command']}` — {p['date']}, {p['cpu']} "
          f"({p['cpus']} cores, load average {load}), Python {p['python']}, {versions}.{note}")


def rendered(text):
  """`text` with every table block replaced by its rendering."""
  return BLOCK.sub(lambda m: m.group(1) + render(m.group(2)) + m.group(4), text)


def main(argv):
  stale = []
  for doc in DOCS:
    text = doc.read_text()
    new = rendered(text)
    if new != text:
      stale.append(doc)
      if "--check" not in argv:
        doc.write_text(new)
  if "--check" in argv:
    sys.exit(1 if stale else 0)


if __name__ == "__main__":
  main(sys.argv[1:])
