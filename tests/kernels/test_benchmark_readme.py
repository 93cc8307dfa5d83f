"""benchmarks/README.md: every table is rendered from its committed artefact, no
numeric table is written by hand, and the rendered ratios follow from the
artefact's own times (recomputed here without the renderer's helpers)."""

import importlib.util
import json
import pathlib
import re
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "_readme.py")
readme_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_tables)
TEXT = readme_tables.README.read_text()
MEASURED = re.compile(r"^\s*[\d.,e+-]+\s*(MiB|GiB|s|ms|×|%)?\s*$")


def test_every_table_block_matches_its_artefact():
  texts = [doc.read_text() for doc in readme_tables.DOCS]
  names = [m.group(2) for text in texts for m in readme_tables.BLOCK.finditer(text)]
  assert sorted(names) == sorted(readme_tables.TABLES)   # each table is in a README once
  for text in texts:
    assert readme_tables.rendered(text) == text, "run: python benchmarks/_readme.py"


def test_fit_table_follows_from_the_committed_compiles():
  """The README's fit table is fit_table.py's rendering of the per-entry compiles in
  benchmarks/results/fit/, and its verdict follows from their bytes against HBM."""
  sys.path.insert(0, str(ROOT / "benchmarks"))
  fit_spec = importlib.util.spec_from_file_location("fit_table", ROOT / "benchmarks" / "fit_table.py")
  fit_table = importlib.util.module_from_spec(fit_spec)
  fit_spec.loader.exec_module(fit_table)
  artefact = json.loads((RESULTS / "fit_table.json").read_text())
  topologies = sorted({row["topology"] for row in artefact["rows"]},
                      key=[t for t in ("v5e:4x4", "v4:2x2x4", "v5p:2x2x1")].index)
  assert fit_table.table(RESULTS / "fit", topologies) == artefact["table"]
  entries = {}
  for path in (RESULTS / "fit").glob("*.json"):
    verdict = json.loads(path.read_text())[0]   # the policy that fits, or the last tried
    assert verdict["fits"] == (verdict["total_bytes"] <= verdict["hbm_bytes"]), path.name
    model, attention = verdict["label"].rsplit(" ", 1)
    entries[model, verdict["devices"], attention] = verdict
  pairs = [(entries[key], entries[key[:2] + ("MHA",)]) for key in entries
           if key[2] == "standard" and key[:2] + ("MHA",) in entries]
  fitting = [(standard, mha) for standard, mha in pairs if standard["fits"]]
  assert len(fitting) >= 40
  mha_fits = sum(mha["fits"] for _, mha in fitting)
  readme = (ROOT / "README.md").read_text()
  assert f"MHA fits in {mha_fits} of the {len(fitting)} compiled cells" in readme


def test_no_numeric_table_outside_the_rendered_blocks():
  outside = readme_tables.BLOCK.sub("", TEXT)
  rows = [line for line in outside.splitlines() if line.startswith("|") and "---" not in line]
  for row in rows:
    cells = [c for c in row.strip("|").split("|")]
    assert not any(MEASURED.match(c) for c in cells), f"hand-written figures: {row}"


def test_step_cost_ratios_follow_from_the_artefacts_times():
  data = json.loads((RESULTS / "step_cost_cpu.json").read_text())
  times = {}
  for row in data["rows"]:
    times.setdefault(row["implementation"], []).append(row["step_s"])
  assert len(times["standard"]) == 2   # the palindromic order the README describes
  block = re.search(r"<!-- table step_cost_cpu -->(.*?)<!-- end table -->", TEXT, re.S).group(1)
  for name in ("naive", "factorized"):
    ratio = statistics.mean(times[name]) / statistics.mean(times["standard"])
    assert f"| {name} | 2 | {statistics.mean(times[name]):.3f} | {ratio:.2f} |" in block
    assert f"{name} {ratio:.2f}×" in block


def test_layerwise_verdicts_follow_from_the_artefacts_bytes():
  block = re.search(r"<!-- table layerwise_memory_v5e -->(.*?)<!-- end table -->", TEXT,
                    re.S).group(1)
  checked = 0
  for artefact in readme_tables.LAYERWISE_ARTEFACTS:
    rows = json.loads((RESULTS / artefact).read_text())["rows"]
    flash = {r["length"]: r for r in rows if r["row"] == "standard_flash"}
    for row in rows:
      if row["row"].removesuffix("_keep") in ("layerwise", "auto") and row["fits"]:
        memory = row["per_device_mib"] / flash[row["length"]]["per_device_mib"]
        word = "met" if memory <= 1.2 else "missed"
        assert f"T={row['length']} {row['row']}: memory {memory:.2f}× (≤ 1.2: {word})" in block
        checked += 1
  assert checked >= 2
