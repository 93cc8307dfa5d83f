"""Smoke modes of the science scripts: each writes its table (CSV/JSON) and PNG, and
the sweep's report holds the numbers of its cell files."""

import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_script(*args):
  subprocess.run([sys.executable, *args], cwd=ROOT, check=True, capture_output=True,
                 env={"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_sweep_smoke_writes_reports_that_match_its_cells(tmp_path):
  run_script("experiments/sweep.py", "--config=configs/sweep.py:preset=alpha_grid,smoke",
             f"--outdir={tmp_path}", f"--cells={tmp_path}/cells")
  cells = [json.loads(p.read_text()) for p in (tmp_path / "cells").glob("*/*.json")
           if p.name != "setup.json"]
  assert len(cells) == 2 + 2 * 2 * 2   # standard × 2 seeds, α × α′ × 2 seeds
  with open(tmp_path / "results.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  by_key = {(r["kind"], r["alpha"], r["alpha_hidden"], r["seed"]): float(r["accuracy"])
            for r in rows}
  for cell in cells:
    c = cell["cell"]
    key = (c["kind"], "" if c["alpha"] is None else str(c["alpha"]),
           "" if c["alpha_hidden"] is None else str(c["alpha_hidden"]), str(c["seed"]))
    assert by_key[key] == pytest.approx(cell["eval"]["accuracy"])
  with open(tmp_path / "summary.csv", encoding="utf-8") as f:
    summary = {(r["kind"], r["alpha"], r["alpha_hidden"]): r for r in csv.DictReader(f)}
  base = [cell["eval"]["accuracy"] for cell in cells if cell["cell"]["kind"] == "standard"]
  assert float(summary[("standard", "", "")]["mean"]) == pytest.approx(np.mean(base))
  assert (tmp_path / "summary.md").read_text().count("\n") >= 6
  assert (tmp_path / "heatmap.png").stat().st_size > 0


@pytest.mark.slow
def test_rank_collapse_and_attention_maps_smoke_write_json_and_png(tmp_path):
  run_script("experiments/rank_collapse.py", "--smoke", "--float64", "--exact_min",
             f"--json={tmp_path}/rank.json", f"--plot={tmp_path}/rank.png")
  rank = json.loads((tmp_path / "rank.json").read_text())
  assert rank["floor"] == 1e-15 and len(rank["rows"]) == 16
  for row in rank["rows"]:
    curves = np.array(row["curves"])
    np.testing.assert_allclose(row["quantiles"]["50"], np.median(curves, axis=0))
    exact = np.array(row["exact"])
    assert exact.shape == curves.shape and np.isfinite(exact).all() and (exact >= 0).all()
  assert (tmp_path / "rank.png").stat().st_size > 0 and (tmp_path / "rank.md").exists()
  run_script("experiments/attention_maps.py", "--smoke", f"--out={tmp_path}/maps")
  maps = json.loads((tmp_path / "maps" / "attention_maps.json").read_text())
  assert [m["label"].split()[0] for m in maps] == ["standard", "hopfield"]
  for m in maps:
    entropy = np.array(m["entropy_per_layer_head"])
    # 17 tokens: entropy of a softmax row lies in [0, log 17]
    assert entropy.shape == (2, 4) and (entropy >= 0).all() and (entropy <= np.log(17)).all()
  for name in ("entropy.png", "cls_over_patches.png"):
    assert (tmp_path / "maps" / name).stat().st_size > 0


def test_results_report_reads_only_the_cells_present(tmp_path):
  """RESULTS.md from synthetic cells of one preset (a partial tree): per-kind verdicts
  from the cells' numbers, ReZero (= standard attention without skips) checked, not
  counted, a failed cell listed, the depth-profile section, "not yet run" for every
  other row, and no folder made for the presets that have none."""
  from mha_jax.sweep import grid
  from mha_jax.train import config_util
  sweep = config_util.load_config(f"{ROOT}/configs/sweep.py:preset=rivals_noskip")
  store = grid.ResultStore(tmp_path / "cells", grid.sweep_setup(sweep))
  lift = {"value_residual": 0.3}   # only value residual clearly better; others equal
  *cells, failed = grid.cells(sweep.grid)
  store.write_failure(failed, "RuntimeError: out of memory")
  for cell in cells:
    accuracy = 0.5 + lift.get(cell["kind"], 0.0) + 0.01 * cell["seed"] + 0.001 * cell["depth"]
    layers = cell["depth"]
    store.write(cell, {"eval": {"accuracy": accuracy}, "seconds": 1.0, "profile": {
        m: [0.5 + 0.01 * cell["seed"]] * layers for m in ("rank_residual", "cosine",
                                                           "centred_cosine")}})
  run_script("experiments/results.py", "--report_only", f"--outdir={tmp_path}",
             f"--results={tmp_path}/R.md")
  text = (tmp_path / "R.md").read_text()
  summary = next(line for line in text.splitlines() if line.startswith("| (e)"))
  assert "rivals_noskip: no difference at this scale — 0 better, 0 worse, 2 no difference" in summary
  assert "value residual: supports — 2 better, 0 worse, 0 no difference" in text
  assert "Cost: 29 training runs, 0.01 h" in text
  assert "ReZero: equal by construction, not counted — 2 of 2 exactly equal" in text
  assert f"`{grid.cell_id(failed)}`: RuntimeError: out of memory" in text
  assert "29 of 30 cells finished" in text
  assert text.count("not yet run") >= 6 and (tmp_path / "rivals_noskip" / "profiles.png").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["R.md", "cells", "rivals_noskip"]
