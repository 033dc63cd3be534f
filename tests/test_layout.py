"""The package's layout rules, checked on its source: no module imports a private name from another module,
and every prompt template sits beside the stage that uses it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "refineg"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_module_imports_a_private_name_from_another_module():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _module(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                source = _absolute(node, here, path.name == "__init__.py")
                if source.startswith("refineg") and source != here:
                    found += [
                        f"{here}: from {source} import {a.name}"
                        for a in node.names
                        if a.name.startswith("_") and a.name != "__version__"
                    ]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                # module._private through an imported refineg module
                if isinstance(node.value, ast.Name) and node.value.id in _imported_modules(path):
                    found.append(f"{here}: {node.value.id}.{node.attr}")
    assert not found, "private names used across modules:\n" + "\n".join(found)


def _imported_modules(path: Path) -> set[str]:
    """Names bound to refineg modules in a file (``from . import refine``, ``import refineg.x as y``)."""
    names = set()
    here = _module(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(node, here, path.name == "__init__.py")
            for a in node.names:
                if (
                    source.startswith("refineg")
                    and (PACKAGE.parent / Path(*f"{source}.{a.name}".split("."))).with_suffix(".py").exists()
                    or (PACKAGE.parent / Path(*f"{source}.{a.name}".split("."))).is_dir()
                ):
                    names.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            names.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("refineg"))
    return names


def test_every_prompt_template_sits_beside_the_stage_that_uses_it():
    """A template is in STAGE/prompts/ and named by that stage's code (or, for grounding, the family table)."""
    templates = [p for p in PACKAGE.rglob("*.txt") if p.read_text(encoding="utf-8").startswith("version:")]
    assert len(templates) >= 7
    misplaced = []
    for path in templates:
        stage = path.parent.parent
        code = "".join(p.read_text(encoding="utf-8") for p in stage.rglob("*.py"))
        if stage.name == "ground":
            code += (PACKAGE / "llm" / "families.py").read_text(encoding="utf-8")
        if path.parent.name != "prompts" or f'"{path.name}"' not in code:
            misplaced.append(str(path.relative_to(PACKAGE)))
    assert not misplaced, "templates away from their stage: " + ", ".join(misplaced)
