"""Recipes: the configs and phase lists behind experiments/*.py, importable from notebooks and forks.

Each recipe module has a frozen config dataclass (every field settable with
`--set`), `PRESETS` (a tiny CPU one first), `build(cfg, workdir, **runner_kwargs)`
returning a Runner (or a list of them) and `report(results, workdir)`, which turns a
run's results into a markdown table and writes it to workdir/summary.md. Experiment files only parse flags and call these.
"""
