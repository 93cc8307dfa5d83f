"""benchmarks/layerwise_memory.py: the committed v5e artefacts are read back, their
ratios recomputed from their own bytes, and the tables of benchmarks/README.md
re-rendered from them (`check_rows` also checks the quick TPU AOT run that
tests/kernels/test_benchmarks.py makes)."""

import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
ARTEFACTS = sorted(RESULTS.glob("layerwise_memory_v5e*.json"))


def check_rows(rows):
  by_row = {(r["length"], r["row"]): r for r in rows}
  for (length, _), row in by_row.items():
    base = by_row[(length, "standard_flash")]
    assert row["temp_x"] == pytest.approx(row["temp_mib"] / base["temp_mib"])
    if row["fits"]:
      assert row["memory_x"] == pytest.approx(row["per_device_mib"] / base["per_device_mib"])
    if "flops" in row:   # --roofline=none: memory only
      roofline_ms = 1e3 * max(row["flops"] / 197e12, row["bytes"] / 819e9)
      assert row["roofline_ms"] == pytest.approx(roofline_ms)
      assert row["roofline_x"] == pytest.approx(row["roofline_ms"] / base["roofline_ms"])
  return by_row


def render(rows):
  """benchmarks/README.md's table lines, formatted here from the JSON fields."""
  lines = []
  for r in rows:
    cells = [r["length"], r["row"], r["resolved"]]
    cells += ([round(r["per_device_mib"]), f"{r['memory_x']:.2f}", round(r["temp_mib"])]
              if r["fits"] else ["does not fit", "–", round(r["temp_mib"])])
    cells += ([f"{r['flops'] / 1e12:.2f}", f"{r['roofline_ms']:.1f}", f"{r['roofline_x']:.2f}"]
              if "flops" in r else ["–", "–", "–"])
    lines.append("| " + " | ".join(map(str, cells)) + " |")
  return lines


@pytest.mark.skipif(not ARTEFACTS, reason="artefact not generated yet")
@pytest.mark.parametrize("artefact", ARTEFACTS, ids=lambda p: p.name)
def test_committed_artefact_ratios_follow_from_its_bytes(artefact):
  data = json.loads(artefact.read_text())
  by_row = check_rows(data["rows"])
  assert data["topology"] == "v5e:2x2" and "command" in data
  for (length, name), row in by_row.items():
    if name == "auto":   # T > W·D: auto runs the O(L·T·D) path, and fits where flash does
      assert row["resolved"] == "layerwise"
      assert row["fits"] or not by_row[(length, "standard_flash")]["fits"]
  readme = (ROOT / "benchmarks" / "README.md").read_text()
  for line in render(data["rows"]):
    assert line in readme
  assert data["command"] in readme
