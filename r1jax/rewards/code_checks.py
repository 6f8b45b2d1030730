"""Asserts as checks: the tested expression runs in the sandbox, the comparison runs here.

`assert add(1, 2) == 3` becomes the probe `add(1, 2)`, evaluated after the model's program in
the sandbox, whose plain value (ints, strings, lists, ...; see sandbox_child.encode_value) is
compared with 3 in the trainer. The expected side must be a constant (`_const`): literals, safe
builtins of literals (`set((1, 2))`, `sorted([...])`), math constants; it never enters the
sandbox. Comparisons inside a probe are refused, since the sandbox would decide them.
"""
from __future__ import annotations

import ast
import dataclasses
import math
import operator
from typing import Any

_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
            ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
        ">=": operator.ge, "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
        "is": operator.is_, "is not": operator.is_not}


@dataclasses.dataclass(frozen=True)
class Check:
    """One assert: `probe` is evaluated in the sandbox; its plain value is compared here.

    op is a comparison ("==", "<", "in", ...; `probe_left` says on which side the probe stood),
    "truthy"/"falsy" for `assert p` / `assert not p`, "isclose" (math.isclose with `rel_tol`,
    `abs_tol`), or "absdiff<"/"absdiff<=" for `abs(p - expected) < abs_tol`.
    """

    probe: str
    op: str
    expected: Any = None
    probe_left: bool = True
    rel_tol: float = 1e-9
    abs_tol: float = 0.0

    def passes(self, value: Any) -> bool:
        """Whether the probe's (decoded) value passes; False where the comparison raises."""
        try:
            if self.op == "truthy":
                return bool(value)
            if self.op == "falsy":
                return not value
            if self.op == "isclose":
                return math.isclose(value, self.expected, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
            if self.op.startswith("absdiff"):
                diff = abs(value - self.expected)
                return bool(diff < self.abs_tol if self.op == "absdiff<" else diff <= self.abs_tol)
            a, b = (value, self.expected) if self.probe_left else (self.expected, value)
            return bool(_OPS[self.op](a, b))
        except Exception:  # noqa: BLE001 - e.g. comparing a str with an int
            return False


def parse_asserts(source: str, entry_point: str | None = None) -> tuple[str, tuple[Check, ...]]:
    """(setup source, checks) of a test file; ValueError naming the line of an unsupported assert."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"asserts do not parse: {e.msg} (line {e.lineno})") from None
    setup: list[ast.stmt] = []
    checks: list[Check] = []
    for node in tree.body:
        if isinstance(node, ast.Assert):
            checks += _checks(node.test, node.lineno)
        elif isinstance(node, ast.FunctionDef) and node.name == "check" and len(node.args.args) == 1:
            target = entry_point or _checked_function(tree)
            rename = _Rename(node.args.args[0].arg, target)
            for stmt in node.body:
                if isinstance(stmt, ast.Assert):
                    checks += _checks(rename.visit(stmt).test, stmt.lineno)
                elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    setup.append(stmt)
                elif not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
                    raise ValueError(f"line {stmt.lineno}: check() may hold only asserts and imports, "
                                     f"got {type(stmt).__name__}")
        elif not _is_check_call(node):
            setup.append(node)
    if not checks:
        raise ValueError("asserts hold no assert statement that tests anything")
    return ast.unparse(ast.Module(setup, [])), tuple(checks)


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str | None):
        if new is None:
            raise ValueError("check(candidate) needs an 'entry_point' or a top-level check(<function>) call")
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(self.new, node.ctx) if node.id == self.old else node


def _is_check_call(node: ast.stmt) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name) and node.value.func.id == "check")


def _checked_function(tree: ast.Module) -> str | None:
    for node in tree.body:
        if _is_check_call(node) and len(node.value.args) == 1 and isinstance(node.value.args[0], ast.Name):
            return node.value.args[0].id
    return None


def _checks(test: ast.expr, line: int) -> list[Check]:
    """The checks of one assert's test expression (`a and b` is two checks; constant asserts none)."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return [c for value in test.values for c in _checks(value, line)]
    if _is_const(test):
        return []  # `assert True`: tests nothing
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return [Check(_probe(test.operand, line), "falsy")]
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, right, op = test.left, test.comparators[0], _COMPARE[type(test.ops[0])]
        if (op in ("<", "<=") and _is_const(right) and isinstance(left, ast.Call)
                and isinstance(left.func, ast.Name) and left.func.id == "abs" and len(left.args) == 1
                and isinstance(left.args[0], ast.BinOp) and isinstance(left.args[0].op, ast.Sub)):
            probe, expected = _split(left.args[0].left, left.args[0].right, line)
            return [Check(probe, "absdiff" + op, expected, abs_tol=_const(right))]
        if op in ("is", "is not") and not any(_is_const(s) and any(_const(s) is v for v in (None, True, False))
                                              for s in (left, right)):
            raise ValueError(f"line {line}: 'is' asserts must compare with None, True or False")
        if _is_const(right) or _is_const(left):
            probe, expected = _split(left, right, line)
            return [Check(probe, op, expected, probe_left=_is_const(right))]
    if (isinstance(test, ast.Call) and ast.unparse(test.func) in ("isclose", "math.isclose")
            and len(test.args) == 2):
        probe, expected = _split(*test.args, line)
        tols = {k.arg: _const(k.value) for k in test.keywords if k.arg in ("rel_tol", "abs_tol")
                and _is_const(k.value)}
        if len(tols) != len(test.keywords):
            raise ValueError(f"line {line}: isclose() takes only constant rel_tol/abs_tol here")
        return [Check(probe, "isclose", expected, **tols)]
    if isinstance(test, (ast.Compare, ast.BoolOp)):
        raise ValueError(f"line {line}: unsupported assert {ast.unparse(test)!r}: compare one expression "
                         "with a constant (==, <, in, is None, ...), or use isclose/abs(a - b) < tol")
    return [Check(_probe(test, line), "truthy")]


def _split(a: ast.expr, b: ast.expr, line: int) -> tuple[str, Any]:
    """(probe source, expected value) of two operands, exactly one of which is a constant."""
    if _is_const(a) == _is_const(b):
        raise ValueError(f"line {line}: an assert must compare one expression with one constant, "
                         f"got {ast.unparse(a)!r} and {ast.unparse(b)!r}")
    return (_probe(b, line), _const(a)) if _is_const(a) else (_probe(a, line), _const(b))


def _probe(node: ast.expr, line: int) -> str:
    """A probe's source; comparisons inside it would be decided in the sandbox, so they are refused."""
    if any(isinstance(n, (ast.Compare, ast.BoolOp)) for n in ast.walk(node)):
        raise ValueError(f"line {line}: the tested expression {ast.unparse(node)!r} contains a "
                         "comparison: compare its value with a constant instead")
    return ast.unparse(node)


def _range(*args: int) -> range:
    r = range(*args)
    if len(r) > 100_000:
        raise ValueError("range too long for an expected value")
    return r


_SAFE_CALLS = {f.__name__: f for f in (set, frozenset, tuple, list, dict, sorted, float, int, str, bool,
                                       complex, abs, round, len, min, max, sum)} | {"range": _range}
_SAFE_ATTRS = {"math.pi": math.pi, "math.e": math.e, "math.tau": math.tau, "math.inf": math.inf,
               "math.nan": math.nan}
_SAFE_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
                ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


class _NotConst(Exception):
    pass


def _is_const(node: ast.expr) -> bool:
    try:
        _const(node)
    except _NotConst:
        return False
    return True


def _const(node: ast.expr) -> Any:
    """The value of an expected-value expression: literals, safe builtins of literals, math constants.

    Evaluated here (never in the sandbox) without running dataset code: no names, no **, and
    arithmetic only on numbers, so a constant cannot be made huge.
    """
    try:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            kind = {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)]
            return kind(_const(e) for e in node.elts)
        if isinstance(node, ast.Dict) and None not in node.keys:
            return {_const(k): _const(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
            value = _const(node.operand)
            if isinstance(node.op, ast.Not):
                return not value
            if isinstance(value, (int, float, complex)):
                return -value if isinstance(node.op, ast.USub) else +value
        if isinstance(node, ast.BinOp) and type(node.op) in _SAFE_BINOPS:
            a, b = _const(node.left), _const(node.right)
            if all(isinstance(x, (int, float, complex)) for x in (a, b)):
                return _SAFE_BINOPS[type(node.op)](a, b)
        if isinstance(node, ast.Attribute) and ast.unparse(node) in _SAFE_ATTRS:
            return _SAFE_ATTRS[ast.unparse(node)]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SAFE_CALLS
                and all(k.arg == "reverse" for k in node.keywords)):
            return _SAFE_CALLS[node.func.id](*[_const(a) for a in node.args],
                                             **{k.arg: _const(k.value) for k in node.keywords})
    except _NotConst:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. int("x"), 1 / 0, an unhashable set member
        raise _NotConst from e
    raise _NotConst


def decode_value(obj: Any) -> Any:
    """The plain Python value a probe reported (the inverse of sandbox_child.encode_value)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    tag, payload = obj
    if tag == "complex":
        return complex(*payload)
    if tag == "bytes":
        return bytes.fromhex(payload)
    if tag == "dict":
        return {decode_value(k): decode_value(v) for k, v in payload}
    kinds = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
    return kinds[tag](decode_value(v) for v in payload)
