"""code-complexity: McCabe complexity, nesting and size per Python function."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from skillscale.skillkit import insights_section, md_table, read_python_source

NESTING_NODES = (
    ast.If,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.With,
    ast.AsyncWith,
    ast.Try,
    ast.Match,
) + ((ast.TryStar,) if hasattr(ast, "TryStar") else ())
FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)
DECISION_NODES = (ast.If, ast.IfExp, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler)


def rank(complexity: int) -> str:
    for limit, letter in ((5, "A"), (10, "B"), (20, "C"), (30, "D"), (40, "E")):
        if complexity <= limit:
            return letter
    return "F"


def own_nodes(func: ast.AST):
    """Nodes of a function body, not descending into nested functions or classes."""
    stack = list(ast.iter_child_nodes(func))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (*FUNCTION_NODES, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def cyclomatic(func: ast.AST) -> int:
    score = 1
    for node in own_nodes(func):
        if isinstance(node, DECISION_NODES):
            score += 1
        elif isinstance(node, ast.BoolOp):
            score += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            score += 1 + len(node.ifs)
        elif isinstance(node, ast.match_case):
            score += 1
    return score


def nesting(node: ast.AST, depth: int = 0) -> int:
    deepest = depth
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (*FUNCTION_NODES, ast.ClassDef, ast.Lambda)):
            continue
        child_depth = depth + 1 if isinstance(child, NESTING_NODES) else depth
        deepest = max(deepest, nesting(child, child_depth))
    return deepest


@dataclass
class Function:
    name: str
    line: int
    length: int
    params: int
    complexity: int
    depth: int


def collect(tree: ast.Module) -> list[Function]:
    found: list[Function] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, FUNCTION_NODES):
                args = child.args
                params = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
                params += bool(args.vararg) + bool(args.kwarg)
                if params and args.args and args.args[0].arg in ("self", "cls") and prefix:
                    params -= 1
                qualified = f"{prefix}{child.name}"
                found.append(
                    Function(
                        qualified,
                        child.lineno,
                        (child.end_lineno or child.lineno) - child.lineno + 1,
                        params,
                        cyclomatic(child),
                        nesting(child),
                    )
                )
                visit(child, qualified + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def main() -> None:
    source, tree = read_python_source()
    functions = collect(tree)
    lines = len(source.splitlines())
    out = ["## Code Complexity", ""]
    if not functions:
        out.append(
            f"{lines} lines, no functions or methods: module-level code only "
            f"(complexity {cyclomatic(tree)})."
        )
        print("\n".join(out))
        return
    complexities = [f.complexity for f in functions]
    average = sum(complexities) / len(complexities)
    worst = max(functions, key=lambda f: (f.complexity, f.depth))
    out += [
        f"**{len(functions)} functions** in {lines} lines; average complexity "
        f"**{average:.1f} ({rank(round(average))})**, "
        f"highest **{worst.complexity}** in `{worst.name}`.",
        "",
        md_table(
            ("Function", "Line", "Complexity", "Rank", "Nesting", "Lines", "Params"),
            [
                (
                    f"`{f.name}`",
                    f.line,
                    f.complexity,
                    rank(f.complexity),
                    f.depth,
                    f.length,
                    f.params,
                )
                for f in sorted(functions, key=lambda f: (-f.complexity, f.line))
            ],
        ),
        "",
        "### Hotspots",
        "",
    ]
    hotspots = []
    for f in sorted(functions, key=lambda f: (-f.complexity, f.line)):
        reasons = []
        if f.complexity > 10:
            reasons.append(
                f"complexity {f.complexity} (rank {rank(f.complexity)}): "
                "split into smaller functions"
            )
        if f.depth > 4:
            reasons.append(
                f"nesting depth {f.depth}: use early returns or extract the inner blocks"
            )
        if f.params > 5:
            reasons.append(f"{f.params} parameters: group related ones into an object")
        if f.length > 60:
            reasons.append(f"{f.length} lines long")
        if reasons:
            hotspots.append(f"- `{f.name}` (line {f.line}): " + "; ".join(reasons))
    out += hotspots or [
        "None: every function is within complexity 10, nesting 4, 5 parameters and 60 lines."
    ]
    out += insights_section(
        "Suggest concrete refactorings for the most complex functions of this Python code, "
        "given these metrics:\n" + "\n".join(out) + "\n\nCode:\n" + source
    )
    print("\n".join(out))


if __name__ == "__main__":
    main()
