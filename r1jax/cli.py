"""Command-line plumbing shared by experiment files: `--set a.b=value` overrides of frozen dataclasses,
and `run`, which turns bad input into one line `error: …` and exit status 2."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from typing import Any, Callable

from r1jax.errors import UsageError


class OverrideError(UsageError):
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
    """A copy of dataclass `cfg` with `path.to.field=value` overrides applied (types from annotations).

    All overrides of one dataclass are applied together and validated once, so their order does
    not matter (`grpo.group_size=4 grpo.num_minibatches=1` and the reverse give the same config).
    """
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise OverrideError(f"override {item!r} is not of the form field=value")
        path, value = item.split("=", 1)
        names = path.strip().split(".")
        node = tree
        for depth, name in enumerate(names):
            last = depth == len(names) - 1
            if isinstance(node.get(name), tuple) or (last and isinstance(node.get(name), dict)):
                raise OverrideError(f"{path.strip()}: set both as a field and as a dataclass with sub-fields")
            if last:
                node[name] = (value, path.strip())
            else:
                node = node.setdefault(name, {})
    return _apply(cfg, tree, "")


def _apply(obj: Any, tree: dict[str, Any], prefix: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        first = next(iter(tree.values()))
        full = first[1] if isinstance(first, tuple) else prefix.rstrip(".")
        raise OverrideError(f"{full}: {type(obj).__name__} has no fields to set")
    fields = {f.name for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for name, sub in tree.items():
        if name not in fields:
            full = sub[1] if isinstance(sub, tuple) else prefix + name
            nested = [f"{prefix}{f}.{name}" for f in sorted(fields) if dataclasses.is_dataclass(getattr(obj, f))
                      and name in {g.name for g in dataclasses.fields(getattr(obj, f))}]
            hint = f" (did you mean {' or '.join(nested)}?)" if nested else ""
            raise OverrideError(f"{full}: {type(obj).__name__} has no field {name!r}{hint}; fields: {sorted(fields)}")
        if isinstance(sub, dict):
            changes[name] = _apply(getattr(obj, name), sub, prefix + name + ".")
        else:
            changes[name] = _parse(sub[0], hints[name], sub[1])
    try:
        return dataclasses.replace(obj, **changes)
    except (ValueError, TypeError) as e:
        given = ", ".join(f"{prefix}{k}={v[0]}" for k, v in tree.items() if isinstance(v, tuple))
        raise OverrideError(f"{given or prefix.rstrip('.')}: {e}") from None


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


def run(main: Callable[[], int | None], prog: str | None = None) -> int:
    """`main()`'s exit status; bad input (UsageError, a missing file) ends as one stderr line and status 2.

    Experiments call `sys.exit(cli.run(main))`. Programming errors are not caught: they raise with
    their traceback. R1JAX_TRACEBACK=1 re-raises bad input too, to see where it was found.
    """
    try:
        return main() or 0
    except (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        if os.environ.get("R1JAX_TRACEBACK") not in (None, "", "0"):
            raise
        if isinstance(e, OSError) and e.filename and e.strerror:  # open()'s own: "[Errno 2] … 'path'"
            message = f"{e.filename}: {e.strerror}"
        else:
            message = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog or os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr, flush=True)
        return 2
