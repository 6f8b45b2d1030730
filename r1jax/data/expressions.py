"""Integer arithmetic expressions as trees: a safe parser (never eval), exact evaluation, rendering.

Grammar: integers, `+ - * /` (also `× ÷ −`), parentheses, unary minus. Values
are `fractions.Fraction`, so `/` is exact and nothing is rounded.
"""
from __future__ import annotations

import dataclasses
import re
from fractions import Fraction

OPS = ("+", "-", "*", "/")
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
MAX_CHARS = 1000
MAX_DEPTH = 64
_UNICODE_OPS = {"×": "*", "÷": "/", "−": "-"}
_TOKEN_RE = re.compile(r"\s*(?:(\d+)|(\S))")


@dataclasses.dataclass(frozen=True)
class Num:
    """An integer literal (or, in reduced expressions, an intermediate value)."""

    value: int


@dataclasses.dataclass(frozen=True)
class Neg:
    """Unary minus."""

    operand: "Node"


@dataclasses.dataclass(frozen=True)
class BinOp:
    """A binary operation `left op right`."""

    op: str
    left: "Node"
    right: "Node"

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown operator {self.op!r}; expected one of {OPS}")


Node = Num | Neg | BinOp


def apply(op: str, left: Fraction, right: Fraction) -> Fraction:
    """`left op right` exactly; ZeroDivisionError on division by zero."""
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    return Fraction(left) / right


def evaluate(node: Node) -> Fraction:
    """Exact value of an expression tree; ZeroDivisionError on division by zero."""
    if isinstance(node, Num):
        return Fraction(node.value)
    if isinstance(node, Neg):
        return -evaluate(node.operand)
    return apply(node.op, evaluate(node.left), evaluate(node.right))


def leaves(node: Node) -> list[int]:
    """The integer literals of a tree, left to right (their signs dropped)."""
    if isinstance(node, Num):
        return [abs(node.value)]
    if isinstance(node, Neg):
        return leaves(node.operand)
    return leaves(node.left) + leaves(node.right)


def has_unary_minus(node: Node) -> bool:
    """True if the tree contains a unary minus anywhere."""
    if isinstance(node, Neg):
        return True
    return isinstance(node, BinOp) and (has_unary_minus(node.left) or has_unary_minus(node.right))


def num_ops(node: Node) -> int:
    """Number of binary operations in a tree."""
    if isinstance(node, Num):
        return 0
    if isinstance(node, Neg):
        return num_ops(node.operand)
    return 1 + num_ops(node.left) + num_ops(node.right)


def render(node: Node) -> str:
    """Infix text with the fewest parentheses that keep the tree's value when re-parsed."""
    return _render(node, is_root=True)


def _render(node: Node, is_root: bool = False) -> str:
    if isinstance(node, Num):
        return str(node.value) if node.value >= 0 or is_root else f"({node.value})"
    if isinstance(node, Neg):
        inner = _render(node.operand)
        text = f"-({inner})" if isinstance(node.operand, BinOp) else f"-{inner}"
        return text if is_root else f"({text})"
    prec = PRECEDENCE[node.op]
    left, right = _render(node.left), _render(node.right)
    if isinstance(node.left, BinOp) and PRECEDENCE[node.left.op] < prec:
        left = f"({left})"
    if isinstance(node.right, BinOp):
        right_prec = PRECEDENCE[node.right.op]
        if right_prec < prec or (right_prec == prec and node.op in "-/"):
            right = f"({right})"
    return f"{left} {node.op} {right}"


def parse(text: str) -> Node:
    """Parse an integer arithmetic expression; ValueError (naming the problem) if it is not one."""
    if not isinstance(text, str):
        raise ValueError(f"expression must be str, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ValueError(f"expression longer than {MAX_CHARS} characters")
    tokens = _tokenize(text)
    if not tokens:
        raise ValueError("empty expression")
    parser = _Parser(tokens)
    node = parser.expr(depth=0)
    if parser.pos != len(tokens):
        raise ValueError(f"unexpected {tokens[parser.pos]!r} in {text!r}")
    return node


def _tokenize(text: str) -> list[str | int]:
    tokens: list[str | int] = []
    for match in _TOKEN_RE.finditer(text.rstrip()):
        digits, symbol = match.groups()
        if digits is not None:
            tokens.append(int(digits))
            continue
        symbol = _UNICODE_OPS.get(symbol, symbol)
        if symbol not in "+-*/()":
            raise ValueError(f"unexpected character {symbol!r} in {text!r}")
        tokens.append(symbol)
    return tokens


class _Parser:
    """Recursive descent: expr := term (+|- term)*; term := unary (*|/ unary)*."""

    def __init__(self, tokens: list[str | int]):
        self.tokens, self.pos = tokens, 0

    def peek(self) -> str | int | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | int:
        token = self.peek()
        if token is None:
            raise ValueError("expression ends too early")
        self.pos += 1
        return token

    def expr(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise ValueError(f"expression nested deeper than {MAX_DEPTH}")
        node = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            node = BinOp(op, node, self.term(depth))
        return node

    def term(self, depth: int) -> Node:
        node = self.unary(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            node = BinOp(op, node, self.unary(depth))
        return node

    def unary(self, depth: int) -> Node:
        if self.peek() == "-":
            self.take()
            return Neg(self.unary(depth + 1))
        return self.atom(depth)

    def atom(self, depth: int) -> Node:
        token = self.take()
        if isinstance(token, int):
            return Num(token)
        if token == "(":
            node = self.expr(depth + 1)
            if self.take() != ")":
                raise ValueError("missing ')'")
            return node
        raise ValueError(f"unexpected {token!r}")
