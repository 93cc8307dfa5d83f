"""Sweep grid: collapsing of axes, resume after a kill (only missing cells are
trained), and aggregation on synthetic results against hand-computed numbers."""

import math
import pathlib

import numpy as np
import ml_collections
import pytest

from mha_jax.sweep import aggregate, grid, profiles
from mha_jax import config_util

ROOT = pathlib.Path(__file__).resolve().parents[2]

GRID = dict(kind=("standard", "hopfield"), alpha=(0.5, 0.7), alpha_hidden=(-1.0,),
            residual=("convex",), h0=("zeros",), reset_every=(0,), depth=(2,), seed=(0, 1, 2))


def test_cells_collapse_axes_a_kind_does_not_read():
  cells = grid.cells(GRID)
  assert sum(c["kind"] == "standard" for c in cells) == 3        # α does not multiply it
  assert sum(c["kind"] == "hopfield" for c in cells) == 6
  assert all(c["alpha_hidden"] == c["alpha"] for c in cells if c["kind"] == "hopfield")
  assert len({grid.cell_id(c) for c in cells}) == len(cells)
  noisy = grid.cells(dict(GRID, h0=("noise",), reset_every=(0, 2)))
  assert not any(c["h0"] == "noise" and c["reset_every"] for c in noisy)


def test_alpha_collapses_under_the_standard_residual_only_when_alpha_hidden_is_set_apart():
  """x + u reads no α; with α′ tied to α (-1) the α axis still varies α′."""
  apart = dict(GRID, kind=("hopfield",), alpha=(0.0, 0.5, 1.0), alpha_hidden=(0.5,),
               residual=("convex", "standard"), seed=(0,))
  by_residual = {r: [c for c in grid.cells(apart) if c["residual"] == r]
                 for r in ("convex", "standard")}
  assert [c["alpha"] for c in by_residual["convex"]] == [0.0, 0.5, 1.0]
  assert [c["alpha"] for c in by_residual["standard"]] == [None]
  config = grid.cell_config(ml_collections.ConfigDict(dict(
      seed=0, model=dict(num_layers=2, attention=dict(kind="standard")))),
      by_residual["standard"][0])
  assert "alpha" not in config.model.attention and config.model.attention.alpha_hidden == 0.5
  tied = grid.cells(dict(apart, alpha_hidden=(-1.0,), residual=("standard",)))
  assert [(c["alpha"], c["alpha_hidden"]) for c in tied] == [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)]


class Killed(BaseException):
  """A kill (SIGKILL, Ctrl-C) ends the sweep; it is not a failure of the cell."""


def store_at(path, setup=None):
  return grid.ResultStore(path, setup or {"base": "test"})


def fake_trainer(log, kill_after=None):
  def train_group(group):
    if kill_after is not None and len(log) >= kill_after:
      raise Killed
    log.append([grid.cell_id(c) for c in group])
    return [{"eval": {"accuracy": 0.5 + 0.01 * c["seed"], "loss": 1.0}} for c in group]
  return train_group


def test_killed_sweep_resumes_and_trains_only_missing_cells(tmp_path):
  first = []
  with pytest.raises(Killed):
    grid.run_sweep(None, GRID, store_at(tmp_path), train_group=fake_trainer(first, kill_after=2),
                   max_group=2, say=lambda _: None)
  cells_dir = pathlib.Path(store_at(tmp_path).dir)
  # a write cut short by the kill leaves only a temp file, which does not count
  (cells_dir / "half-written.tmp").write_text("{")
  done_before = {p.stem for p in cells_dir.glob("*.json")} - {"setup"}
  assert done_before == {cid for group in first for cid in group}
  second = []
  trained, skipped, left = grid.run_sweep(None, GRID, store_at(tmp_path),
                                          train_group=fake_trainer(second), max_group=2,
                                          say=lambda _: None)
  retrained = {cid for group in second for cid in group}
  all_ids = {grid.cell_id(c) for c in grid.cells(GRID)}
  assert retrained == all_ids - done_before and not retrained & done_before
  assert (trained, skipped, left) == (len(retrained), len(done_before), 0)
  assert len(store_at(tmp_path).results(grid.cells(GRID))) == len(all_ids)
  # a third run has nothing to do
  third = []
  assert grid.run_sweep(None, GRID, store_at(tmp_path), train_group=fake_trainer(third),
                        say=lambda _: None)[0] == 0 and not third


def test_presets_listing_the_same_cell_share_its_one_result(tmp_path):
  """Two grids with one training setup: the second trains only the cells the first
  lacks and reads the shared ones' results; another setup shares nothing."""
  first, second, other = [], [], []
  grid.run_sweep(None, GRID, store_at(tmp_path), train_group=fake_trainer(first),
                 say=lambda _: None)
  wider = dict(GRID, alpha=(0.5, 0.9))   # α = 0.5 and standard are in both grids
  grid.run_sweep(None, wider, store_at(tmp_path), train_group=fake_trainer(second),
                 say=lambda _: None)
  trained_twice = {c for g in first for c in g} & {c for g in second for c in g}
  assert not trained_twice
  assert {c for g in second for c in g} == {grid.cell_id(c) for c in grid.cells(wider)
                                            if c["alpha"] == 0.9}
  shared = [c for c in grid.cells(GRID) if c["alpha"] in (None, 0.5)]
  assert store_at(tmp_path).results(shared) == [
      r for r in store_at(tmp_path).results(grid.cells(wider)) if r["cell"] in shared]
  grid.run_sweep(None, GRID, store_at(tmp_path, {"base": "other"}),
                 train_group=fake_trainer(other), say=lambda _: None)
  assert len({c for g in other for c in g}) == len(grid.cells(GRID))


def test_a_failed_group_is_recorded_then_retried_with_progress_and_eta(tmp_path):
  """A group that raises leaves its error per cell and the sweep goes on; the next
  run trains it. Each finished cell prints [i/N], its metrics and an ETA from this
  run's seconds per cell (a fake clock: 10 s per group)."""
  ticks = iter(range(0, 1000, 10))
  lines = []
  def flaky(group):
    if any(c["alpha"] == 0.7 for c in group):
      raise RuntimeError("NaN loss at step 3")
    return [{"eval": {"accuracy": 0.5}} for _ in group]
  store = store_at(tmp_path)
  trained, skipped, left = grid.run_sweep(None, GRID, store, train_group=flaky, max_group=3,
                                          say=lines.append, clock=lambda: next(ticks))
  assert (trained, skipped, left) == (6, 0, 3)
  failures = store.failures(grid.cells(GRID))
  assert [f["error"] for f in failures] == ["RuntimeError: NaN loss at step 3"] * 3
  assert {f["cell"]["alpha"] for f in failures} == {0.7}
  # three groups of 3 cells; after group g the clock read 10·g s for 3g cells
  assert lines[0].startswith("[1/9] ") and "accuracy=0.5000" in lines[0]
  assert lines[0].endswith("ETA 0.3 min")            # 10 s / 3 cells × 6 left = 20 s
  assert "FAILED (RuntimeError: NaN loss at step 3)" in lines[6] and lines[8].startswith("[9/9]")
  assert lines[8].endswith("ETA 0.0 min")
  again = []
  grid.run_sweep(None, GRID, store, train_group=fake_trainer(again), say=lambda _: None)
  assert {c for g in again for c in g} == {grid.cell_id(f["cell"]) for f in failures}
  assert not store.failures(grid.cells(GRID)) and len(store.results(grid.cells(GRID))) == 9


def result(kind, seed, accuracy, alpha=None):
  cell = dict(kind=kind, alpha=alpha, alpha_hidden=alpha, residual="convex" if alpha else None,
              h0="zeros" if alpha else None, reset_every=0 if alpha else None, depth=6,
              seed=seed)
  return {"cell": cell, "eval": {"accuracy": accuracy, "loss": 1.0}}


T_975_2 = 4.302652729911275   # Student t, 97.5 % quantile, 2 degrees of freedom (tables)


def test_aggregation_matches_hand_computed_numbers():
  results = ([result("standard", s, a) for s, a in enumerate([0.80, 0.82, 0.84])]
             + [result("hopfield", s, a, 0.5) for s, a in enumerate([0.83, 0.86, 0.85])]
             + [result("hopfield", s, a, 0.7) for s, a in enumerate([0.75, 0.76, 0.80])])
  rows = {r["alpha"]: r for r in aggregate.summarize(results)}
  base, up, down = rows[None], rows[0.5], rows[0.7]
  assert base["metric"] == "accuracy" and base["n"] == 3
  assert base["mean"] == pytest.approx(0.82) and base["std"] == pytest.approx(0.02)
  assert "delta" not in base
  # α = 0.5: differences 0.03, 0.04, 0.01 → mean 0.02667, sd 0.015275
  sd = math.sqrt(((0.03 - 0.08 / 3) ** 2 + (0.04 - 0.08 / 3) ** 2 + (0.01 - 0.08 / 3) ** 2) / 2)
  assert sd == pytest.approx(0.0152753, abs=1e-6)
  half = T_975_2 * sd / math.sqrt(3)
  assert up["delta"] == pytest.approx(0.08 / 3)
  assert (up["ci_low"], up["ci_high"]) == pytest.approx((0.08 / 3 - half, 0.08 / 3 + half))
  assert up["verdict"] == "no difference at this scale"   # the interval holds 0
  # α = 0.7: differences −0.05, −0.06, −0.04 → mean −0.05, sd 0.01: an interval below 0
  assert down["delta"] == pytest.approx(-0.05)
  assert down["ci_high"] == pytest.approx(-0.05 + T_975_2 * 0.01 / math.sqrt(3))
  assert down["verdict"] == "worse"
  # lower-is-better metrics flip the words, not the numbers
  flipped = {r["alpha"]: r for r in aggregate.summarize(results, "accuracy", False)}
  assert flipped[0.7]["verdict"] == "better" and flipped[0.7]["delta"] == down["delta"]
  table = aggregate.markdown(list(rows.values()))
  assert "0.8200 ± 0.0200" in table and "worse" in table


def test_alpha_grid_places_means_and_heatmap_writes(tmp_path):
  results = [result("hopfield", s, 0.1 * a + 0.01 * s, a) for a in (0.2, 0.5) for s in (0, 1)]
  rows = aggregate.summarize(results)
  (alphas, hiddens, matrix), = aggregate.alpha_grid(rows).values()
  assert alphas == hiddens == [0.2, 0.5]
  np.testing.assert_allclose(np.diag(matrix), [0.025, 0.055])
  assert np.isnan(matrix[0, 1])
  assert aggregate.heatmap(rows, tmp_path / "h.png") and (tmp_path / "h.png").stat().st_size > 0


def test_a_preset_on_another_dataset_replaces_the_whole_data_block():
  sweep = config_util.load_config(f"{ROOT}/configs/sweep.py:preset=recall")
  config = grid.base_config(sweep)
  assert config.data.name == "associative_recall" and config.model.max_len == 16
  assert (config.data.num_keys, config.data.seq_len) == (16, 16)
  assert "tokenizer" in config.data and config.data.tokenizer == ""   # the recall row's own
  untouched = config_util.load_config(f"{ROOT}/{sweep.base}").optim.weight_decay
  assert config.optim.learning_rate == 1e-2 and config.optim.weight_decay == untouched
  assert sweep.metric == "accuracy"
  assert grid.base_config(config_util.load_config(
      f"{ROOT}/configs/sweep.py:preset=gpt_char")).data.name == "shakespeare_char"


def test_a_named_metric_overrides_the_text_default():
  results = [{"cell": dict(c, seed=c["seed"]),
              "eval": {"accuracy": 0.1 * (c["kind"] == "hopfield") + 0.01 * c["seed"],
                       "perplexity": 5.0 + c["seed"]}}
             for c in grid.cells(dict(GRID, alpha=(0.5,)))]
  assert {r["metric"] for r in aggregate.summarize(results)} == {"perplexity"}
  rows = aggregate.summarize(results, *aggregate.metric_direction("accuracy"))
  mha = next(r for r in rows if r["kind"] == "hopfield")
  assert mha["delta"] == pytest.approx(0.1) and mha["verdict"] == "better"
  with pytest.raises(ValueError, match="metric='bleu'; allowed"):
    aggregate.metric_direction("bleu")


def test_depth_profiles_average_over_seeds_and_pair_the_last_layer(tmp_path):
  """Synthetic 3-layer profiles: per-layer mean/std and the last-layer paired interval
  by hand (t_{0.975, 2} = 4.302653)."""
  base = {0: [0.9, 0.5, 0.2], 1: [0.8, 0.4, 0.1], 2: [1.0, 0.6, 0.3]}
  mha = {0: [0.9, 0.6, 0.4], 1: [0.8, 0.5, 0.2], 2: [1.0, 0.7, 0.5]}   # last: +0.2, +0.1, +0.2
  results = [{"cell": c, "eval": {"accuracy": 0.5},
              "profile": {"rank_residual": (base if c["kind"] == "standard" else mha)[c["seed"]]}}
             for c in grid.cells(dict(GRID, alpha=(0.5,)))]
  results.append({"cell": dict(results[0]["cell"], depth=4, seed=0), "eval": {}})  # no profile
  rows = {r["kind"]: r for r in profiles.summarize(results, "rank_residual")}
  assert set(rows) == {"standard", "hopfield"}
  np.testing.assert_allclose(rows["standard"]["mean"], [0.9, 0.5, 0.2])
  np.testing.assert_allclose(rows["standard"]["std"], [0.1, 0.1, 0.1])
  d = np.array([0.2, 0.1, 0.2])
  half = 4.302653 * d.std(ddof=1) / math.sqrt(3)
  assert rows["hopfield"]["delta"] == pytest.approx(d.mean())
  assert rows["hopfield"]["ci_low"] == pytest.approx(d.mean() - half, abs=1e-5)
  assert rows["hopfield"]["verdict"] == "better"    # higher residual = less collapse
  assert "less |" in profiles.markdown(list(rows.values()))
  # both collapsed to float32 rounding: not a difference, however consistent its sign
  for r in results:
    if "profile" in r:
      r["profile"]["rank_residual"] = [0.5, 0.0, (3e-7 if r["cell"]["kind"] == "hopfield" else 0.0)]
  floor = {r["kind"]: r for r in profiles.summarize(results, "rank_residual")}
  assert floor["hopfield"]["verdict"] == "no difference at this scale"
  assert profiles.plot({"rank_residual": list(rows.values())}, tmp_path / "p.png")
  assert (tmp_path / "p.png").stat().st_size > 0


def test_holm_adjusts_p_values_by_hand():
  # sorted 0.01, 0.03, 0.04 → 3·0.01, max(0.03, 2·0.03), max(0.06, 1·0.04)
  adjusted = aggregate.holm_adjust([0.01, 0.04, math.nan, 0.03])
  assert adjusted[:2] == pytest.approx([0.03, 0.06]) and math.isnan(adjusted[2])
  assert adjusted[3] == pytest.approx(0.06)
  assert aggregate.holm_adjust([0.2, 0.9]) == pytest.approx([0.4, 0.9])   # monotone, ≤ 1
  assert aggregate.holm_adjust([0.9, 0.6]) == pytest.approx([1.0, 1.0])


def test_verdicts_follow_the_holm_corrected_p_and_controls_are_not_counted():
  """α = 0.5 lies just outside 0 alone (p = 0.049) but not after correcting for the two
  tested settings; α = 0.9 is a control equal to the baseline by construction."""
  base = [0.80, 0.82, 0.84]
  offsets = {0.5: [-0.03, -0.05, -0.07], 0.7: [0.01, -0.01, 0.0], 0.9: [0.0, 0.0, 0.0]}
  results = [result("standard", s, a) for s, a in enumerate(base)] + [
      result("hopfield", s, base[s] + d[s], alpha) for alpha, d in offsets.items()
      for s in range(3)]
  rows = {r["alpha"]: r for r in aggregate.summarize(results, controls=[dict(alpha=0.9)])}
  t = 0.05 / (0.02 / math.sqrt(3))                  # mean −0.05, sd 0.02, n = 3
  p_two_dof = 1 - t / math.sqrt(t * t + 2)          # Student t, 2 dof: closed form
  assert rows[0.5]["p_value"] == pytest.approx(p_two_dof, rel=1e-6) and p_two_dof < 0.05
  assert rows[0.5]["verdict"] == "worse"            # uncorrected: the interval excludes 0
  aggregate.holm(list(rows.values()))
  assert rows[0.5]["p_holm"] == pytest.approx(2 * p_two_dof, rel=1e-6)
  assert rows[0.5]["verdict"] == "no difference at this scale"
  assert rows[0.9]["verdict"] == aggregate.EQUAL_BY_CONSTRUCTION and "p_holm" not in rows[0.9]
  broken = aggregate.summarize(results, controls=[dict(alpha=0.7)])
  assert next(r for r in broken if r["alpha"] == 0.7)["verdict"] == aggregate.BROKEN_CONTROL
  table = aggregate.markdown(list(rows.values()))
  assert f"| {2 * p_two_dof:.3f} | no difference at this scale |" in table
