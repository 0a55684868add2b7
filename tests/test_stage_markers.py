"""A stage's "finished" marker is written last, after all its outputs (issue 9): a search killed
between its plots and ``best.json`` is not taken for finished, and its rerun writes everything."""

from __future__ import annotations

import pytest

import detnas.search.plots
from detnas.config.runs import BEST_FILE
from detnas.config.schema import SearchConfig
from detnas.model.space import SearchSpace
from detnas.search.engine import run_search

TINY = SearchSpace("tiny", 8, (1, 1, 1, 1), (16, 32, 64, 128))
CFG = SearchConfig(population=8, generations=2, topk=2, mutations=2, crossovers=2)


def fitness(arch) -> dict:
    return {"map": float(sum(arch))}


def test_best_json_comes_after_the_plots(tmp_path, monkeypatch):
    real = detnas.search.plots.plot_search

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while plotting")

    monkeypatch.setattr(detnas.search.plots, "plot_search", killed)
    with pytest.raises(KeyboardInterrupt):
        run_search(TINY, CFG, fitness, tmp_path, progress=False)
    assert not (tmp_path / BEST_FILE).exists()  # the pipeline will not skip this search
    monkeypatch.setattr(detnas.search.plots, "plot_search", real)
    run_search(TINY, CFG, fitness, tmp_path, resume=True, progress=False)
    assert all((tmp_path / f).exists() for f in (BEST_FILE, "search_progress.png", "search_pareto.png"))
