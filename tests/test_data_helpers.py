"""An evaluator independent of r1jax.data.expressions, for checking gold answers (ast walk, never eval)."""
import ast
from fractions import Fraction

_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def independent_eval(text: str) -> tuple[Fraction, list[Fraction], list[int]]:
    """(value, every intermediate value, literals) of an expression of ints, + - * / and parentheses."""
    intermediates: list[Fraction] = []
    literals: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            literals.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            value = {"+": left + right, "-": left - right, "*": left * right,
                     "/": left / right if right else None}[_OPS[type(node.op)]]
            assert value is not None, f"division by zero in {text!r}"
            intermediates.append(value)
            return value
        raise AssertionError(f"unexpected syntax {ast.dump(node)} in {text!r}")

    value = walk(ast.parse(text, mode="eval").body)
    return value, intermediates, literals


def test_independent_eval_itself():
    value, steps, literals = independent_eval("(17 + 5) * 3 - 8")
    assert value == 58 and steps == [22, 66, 58] and literals == [17, 5, 3, 8]
    for bad in ("abs(1)", "2 ** 3", "1.5 + 1", "1 / 0"):
        try:
            independent_eval(bad)
        except AssertionError:
            continue
        raise AssertionError(f"accepted {bad!r}")
