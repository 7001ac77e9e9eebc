"""dead-code-detector: unused imports, variables, definitions; unreachable code."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from skillscale.skillkit import insights_section, md_table, read_python_source

FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)
TERMINATORS = (ast.Return, ast.Raise, ast.Break, ast.Continue)


@dataclass(frozen=True)
class Finding:
    kind: str
    line: int
    name: str
    detail: str


def loaded_names(tree: ast.AST) -> set[str]:
    """Every name read anywhere, plus attribute names (conservative for methods)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.isidentifier()
        ):
            names.add(node.value)  # __all__ entries, getattr(obj, "name"), string annotations
    return names


def dunder_all(tree: ast.Module) -> set[str]:
    for node in tree.body:
        names_all = isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        )
        if names_all and isinstance(node.value, (ast.List, ast.Tuple)):
            return {
                e.value
                for e in node.value.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            }
    return set()


def unused_imports(tree: ast.Module, used: set[str], exported: set[str]) -> list[Finding]:
    findings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    continue
                bound = alias.asname or alias.name.split(".")[0]
                if alias.asname and alias.asname == alias.name:
                    continue  # explicit re-export
                if bound not in used and bound not in exported:
                    source = (
                        alias.name
                        if isinstance(node, ast.Import)
                        else f"{node.module or '.'}.{alias.name}"
                    )
                    findings.append(
                        Finding("unused import", node.lineno, bound, f"`{source}` is never used")
                    )
    return findings


def stored_names(func: ast.AST) -> dict[str, int]:
    """Local names assigned in a function body (first line), not in nested scopes."""
    stored: dict[str, int] = {}
    declared: set[str] = set()
    stack = list(ast.iter_child_nodes(func))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            declared.update(node.names)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            stored.setdefault(node.id, node.lineno)
        if isinstance(node, ast.ExceptHandler) and node.name:
            stored.setdefault(node.name, node.lineno)
        if not isinstance(node, (*FUNCTION_NODES, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))
    return {k: v for k, v in stored.items() if k not in declared and not k.startswith("_")}


def unused_locals(tree: ast.Module) -> list[Finding]:
    findings = []
    for func in ast.walk(tree):
        if not isinstance(func, FUNCTION_NODES):
            continue
        reads = {
            n.id
            for n in ast.walk(func)
            if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store)
        }
        reads |= {
            n.target.id
            for n in ast.walk(func)
            if isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name)
        }
        for name, line in sorted(stored_names(func).items(), key=lambda kv: kv[1]):
            if name not in reads:
                findings.append(
                    Finding(
                        "unused variable", line, name, f"assigned in `{func.name}` but never read"
                    )
                )
    return findings


def unused_definitions(tree: ast.Module, used: set[str], exported: set[str]) -> list[Finding]:
    findings = []
    for node in tree.body:
        if isinstance(node, (*FUNCTION_NODES, ast.ClassDef)):
            name = node.name
            if name in used or name in exported or (name.startswith("__") and name.endswith("__")):
                continue
            what = "class" if isinstance(node, ast.ClassDef) else "function"
            if name.startswith("_"):
                findings.append(
                    Finding(f"unused {what}", node.lineno, name, "private and never referenced")
                )
            elif name not in ("main",) and not node.decorator_list:
                findings.append(
                    Finding(
                        f"possibly unused {what}",
                        node.lineno,
                        name,
                        "never referenced in this file (importers may use it)",
                    )
                )
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if (
                    isinstance(member, FUNCTION_NODES)
                    and member.name.startswith("_")
                    and not member.name.startswith("__")
                    and member.name not in used
                    and not member.decorator_list
                ):
                    findings.append(
                        Finding(
                            "unused method",
                            member.lineno,
                            f"{node.name}.{member.name}",
                            "private and never referenced",
                        )
                    )
    return findings


def is_exit_call(stmt: ast.stmt) -> bool:
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return False
    func = stmt.value.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return (func.value.id, func.attr) in (("sys", "exit"), ("os", "_exit"))
    return isinstance(func, ast.Name) and func.id in ("exit", "quit")


def is_false(test: ast.expr) -> bool:
    return (isinstance(test, ast.Constant) and not test.value and test.value is not None) or (
        isinstance(test, ast.Constant) and test.value is None
    )


def unreachable(tree: ast.Module) -> list[Finding]:
    findings = []
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            for index, stmt in enumerate(block[:-1]):
                if isinstance(stmt, TERMINATORS) or is_exit_call(stmt):
                    dead = block[index + 1]
                    end = block[-1].end_lineno or block[-1].lineno
                    keyword = type(stmt).__name__.lower() if not is_exit_call(stmt) else "exit call"
                    findings.append(
                        Finding(
                            "unreachable code",
                            dead.lineno,
                            f"lines {dead.lineno}-{end}",
                            f"follows the `{keyword}` on line {stmt.lineno}",
                        )
                    )
                    break
        if isinstance(node, (ast.If, ast.While)) and is_false(node.test) and node.body:
            findings.append(
                Finding(
                    "unreachable code",
                    node.body[0].lineno,
                    f"lines {node.body[0].lineno}-{node.body[-1].end_lineno}",
                    f"the condition on line {node.lineno} is always false",
                )
            )
    return findings


def main() -> None:
    source, tree = read_python_source()
    used = loaded_names(tree)
    exported = dunder_all(tree)
    findings = (
        unused_imports(tree, used, exported)
        + unused_locals(tree)
        + unused_definitions(tree, used, exported)
        + unreachable(tree)
    )
    findings.sort(key=lambda f: (f.line, f.kind))
    out = ["## Dead Code Report", ""]
    if not findings:
        out.append(f"No dead code found in {len(source.splitlines())} lines.")
        print("\n".join(out))
        return
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    out += [
        f"**{len(findings)} finding(s)** in {len(source.splitlines())} lines: "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + ".",
        "",
        md_table(
            ("Line", "Kind", "Name", "Detail"),
            [(f.line, f.kind, f"`{f.name}`", f.detail) for f in findings],
        ),
    ]
    # (Same closing as code-complexity: each skill is a standalone script by design.)
    out += insights_section(
        "Given this dead-code report, say what is safe to delete and what needs a check "
        "first:\n" + "\n".join(out) + "\n\nCode:\n" + source
    )
    print("\n".join(out))


if __name__ == "__main__":
    main()
