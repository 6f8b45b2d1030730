"""Recipes: the configs and phase lists behind experiments/*.py, importable from notebooks and forks.

Each recipe module has a frozen config dataclass (every field settable with
`--set`), `PRESETS` (a tiny CPU one first), `build(cfg, workdir, **runner_kwargs)`
returning a Runner (or a list of them) and a `report` that turns results into a
markdown table. Experiment files only parse flags and call these.
"""
