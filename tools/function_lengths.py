"""Functions in src/ whose body runs over a limit (default 60 lines): the docstring and the signature are not
counted, so a documented argument list (a diffusers `__call__`) does not count against its logic.

    python tools/function_lengths.py [--limit 60]     # exits 1 if any function is over
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return (node.end_lineno or node.lineno) - body[0].lineno + 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("root", nargs="?", default=str(pathlib.Path(__file__).resolve().parent.parent / "src"))
    args = parser.parse_args()
    over = []
    for path in sorted(pathlib.Path(args.root).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body_lines(node) > args.limit:
                over.append(f"{body_lines(node):4d} lines  {path}:{node.lineno} {node.name}")
    print("\n".join(over) or f"no function body over {args.limit} lines")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
