"""RESULTS.md rows (h), (i), (j) agree with the committed artefacts they are read from:
each number is recomputed here from the JSON files, independently of the renderer."""

import json
import pathlib
import re

import numpy as np
import pytest

from mha_jax.sweep import grid
from mha_jax import config_util

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = (ROOT / "RESULTS.md").read_text(encoding="utf-8")
# the metric each preset's table compares (recall is scored by answers recalled)
ENERGY_PRESETS = {"energy_heads": "accuracy", "energy_heads_char": "perplexity",
                  "energy_heads_recall": "accuracy"}


def section(row_id):
  match = re.search(rf"^## \({row_id}\) .*?(?=^## \(|\Z)", RESULTS, re.M | re.S)
  assert match, f"RESULTS.md has no row ({row_id})"
  return match.group(0)


def table_lines(text, first_cell):
  return [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]


def test_row_h_capacities_are_the_artefacts():
  data = json.loads((ROOT / "sweeps/energy_capacity/energy_capacity.json").read_text())
  capacity = {}
  for row in data["rows"]:   # the largest M whose mean success is >= 0.9, else 0
    key = (row["separation"], row["steps"], row["corruption"], row["beta_factor"], row["dim"])
    capacity[key] = max(capacity.get(key, 0), row["patterns"] if row["mean"] >= 0.9 else 0)
  text = section("h")
  header = next(line for line in text.splitlines() if line.startswith("| separation | steps"))
  columns = [re.match(r"(\w+) β=([\d.]+)/√D D=(\d+)", c.strip()).groups()
             for c in header.strip("|").split("|")[2:]]
  seen = 0
  for separation, steps in {(k[0], k[1]) for k in capacity}:
    line, = [l for l in table_lines(text, separation) if l.split("|")[2].strip() == str(steps)]
    cells = [c.strip() for c in line.strip("|").split("|")[2:]]
    for (corruption, factor, dim), cell in zip(columns, cells):
      assert int(cell) == capacity[(separation, steps, corruption, float(factor), int(dim))]
      seen += 1
  assert seen == len(capacity) == 180
  softmax = {k[1:]: v for k, v in capacity.items() if k[0] == "softmax"}
  entmax = [(v, softmax[k[1:]]) for k, v in capacity.items() if k[0] == "entmax"]
  words = (f"entmax higher in {sum(a > b for a, b in entmax)}, lower in "
           f"{sum(a < b for a, b in entmax)}, equal in {sum(a == b for a, b in entmax)}")
  assert words in text and words in next(l for l in RESULTS.splitlines() if l.startswith("| (h)"))


def test_row_i_per_head_numbers_are_the_artefacts():
  data = json.loads((ROOT / "sweeps/context_wells/context_wells.json").read_text())
  text = section("i")
  for record in data["models"]:
    part = text.split(f"### `{record['model']}`")[1].split("###")[0]
    seeds = record["seeds"]
    for n, h in np.ndindex(len(seeds[0]["layers"]), len(seeds[0]["layers"][0]["mean_steps"])):
      mean = lambda field: np.mean([s["layers"][n][field][h] for s in seeds], 0)  # noqa: E731
      line, = [l for l in table_lines(part, n + 1) if l.split("|")[2].strip() == str(h)]
      cells = [c.strip() for c in line.strip("|").split("|")]
      assert float(cells[2]) == pytest.approx(mean("mean_steps"), abs=0.005)
      assert float(cells[4]) == pytest.approx(mean("converged"), abs=0.0005)
      assert float(cells[5]) == pytest.approx(mean("energy_drop"), abs=0.00005)
      fixed = [float(x) for x in cells[7].split("/")]
      np.testing.assert_allclose(fixed, mean("fixed_point_wells"), atol=0.0005)
      assert abs(sum(fixed) - 1) < 0.003   # every query is in exactly one well type


@pytest.mark.parametrize("preset", ENERGY_PRESETS)
def test_row_j_means_and_paired_deltas_are_the_cells(preset):
  sweep = config_util.load_config(f"{ROOT}/configs/sweep.py:preset={preset}")
  folder = ROOT / "sweeps" / "cells" / grid.setup_digest(grid.sweep_setup(sweep))
  metric = ENERGY_PRESETS[preset]
  by_setting = {}
  for path in folder.glob("*.json"):
    if path.name in ("setup.json",) or path.name.endswith(".failed.json"):
      continue
    record = json.loads(path.read_text())
    cell = record["cell"]
    words = [cell["kind"]] + [f"{a}={cell[a]}" for a in grid.ATTENTION_AXES
                              if cell.get(a) is not None]
    value = record["eval"][metric]
    by_setting.setdefault(" ".join(words), {})[cell["seed"]] = value
  part = section("j").split(f"### `{preset}`")[1].split("\n### ")[0]
  if not by_setting:
    assert "not yet run" in part
    pytest.skip(f"{preset}: no cells committed")
  base = by_setting["standard"]
  for setting, seeds in by_setting.items():
    values = np.array([seeds[s] for s in sorted(seeds)])
    line, = table_lines(part, setting)
    cells = [c.strip() for c in line.strip("|").split("|")]
    mean, std = (float(x) for x in cells[3].split("±"))
    assert mean == pytest.approx(values.mean(), abs=5e-5)
    assert std == pytest.approx(values.std(ddof=1), abs=5e-5)
    if setting != "standard" and len(seeds) > 1:
      paired = [seeds[s] - base[s] for s in sorted(seeds) if s in base]
      assert float(cells[5].split("[")[0]) == pytest.approx(np.mean(paired), abs=5e-5)


def test_row_j_names_every_diverged_setting():
  sweep = config_util.load_config(f"{ROOT}/configs/sweep.py:preset=energy_heads")
  folder = ROOT / "sweeps" / "cells" / grid.setup_digest(grid.sweep_setup(sweep))
  diverged = {}
  for path in folder.glob("*-*.json"):
    record = json.loads(path.read_text())
    if "final_train_loss" in record and not np.isfinite(record["final_train_loss"]):
      cell = record["cell"]
      name = " ".join([cell["kind"]] + [f"{a}={cell[a]}" for a in grid.ATTENTION_AXES
                                        if cell.get(a) is not None])
      diverged[name] = diverged.get(name, 0) + 1
  line = next((l for l in section("j").splitlines() if l.startswith("Diverged")), "")
  for name, seeds in diverged.items():
    assert f"`energy_heads` {name} ({seeds} seeds)" in line
  assert line.count("`energy_heads` ") == len(diverged)
