"""Command-line plumbing shared by experiment files: `--set a.b=value` overrides of frozen dataclasses."""
from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from typing import Any


class OverrideError(ValueError):
    """An override names no field, or its value does not parse as the field's type."""


def _parse(value: str, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value.lower() == "none" and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse(value, arg, where)
            except OverrideError as e:
                errors.append(str(e))
        raise OverrideError(f"{where}: cannot parse {value!r} as {annotation}")
    if annotation is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise OverrideError(f"{where}: {value!r} is not a bool (true/false)")
    if annotation in (int, float):
        try:
            return annotation(value)
        except ValueError:
            raise OverrideError(f"{where}: {value!r} is not {annotation.__name__}") from None
    if annotation is str:
        return value
    if origin is tuple:
        return tuple(_parse(v.strip(), args[0], where) for v in value.split(",") if v.strip())
    raise OverrideError(f"{where}: fields of type {annotation} cannot be set from the command line")


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """A copy of dataclass `cfg` with `path.to.field=value` overrides applied (types from annotations)."""
    for item in overrides:
        if "=" not in item:
            raise OverrideError(f"override {item!r} is not of the form field=value")
        path, value = item.split("=", 1)
        cfg = _set(cfg, path.strip().split("."), value, path.strip())
    return cfg


def _set(obj: Any, names: list[str], value: str, full: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise OverrideError(f"{full}: {type(obj).__name__} has no fields to set")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = names[0]
    if name not in fields:
        raise OverrideError(f"{full}: {type(obj).__name__} has no field {name!r}; fields: {sorted(fields)}")
    if len(names) > 1:
        new = _set(getattr(obj, name), names[1:], value, full)
    else:
        hints = typing.get_type_hints(type(obj))
        new = _parse(value, hints[name], full)
    try:
        return dataclasses.replace(obj, **{name: new})
    except (ValueError, TypeError) as e:
        raise OverrideError(f"{full}={value}: {e}") from None


def add_common_flags(parser: argparse.ArgumentParser, presets: list[str]) -> None:
    """--workdir, --mesh, --preset and repeated --set field=value."""
    parser.add_argument("--workdir", default=None, help="run directory (resumed if it has checkpoints)")
    parser.add_argument("--mesh", default=None, metavar="SPEC",
                        help="device mesh (r1jax.sharding): 8x8 = data×fsdp, -1 fills from the device count, "
                             "or named axes such as fsdp=8,expert=8; default: one device. On CPU, split it "
                             "into N devices with JAX_NUM_CPU_DEVICES=N")
    parser.add_argument("--preset", default=presets[0], choices=presets)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, e.g. --set rl_steps=100 --set grpo.group_size=8")


def parse_and_launch(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags, then start jax.distributed if the launch environment asks for it (before any other jax use)."""
    args = parser.parse_args(argv)
    from r1jax import distributed

    distributed.initialize()
    return args


def save_summary(workdir: str, markdown: str) -> str:
    """Write a run's result table to `workdir/summary.md` (replacing it); returns the path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "summary.md")
    with open(path, "w") as f:
        f.write(markdown.rstrip("\n") + "\n")
    return path
