"""The library's shape: subpackages by concern (three workflows over a shared core), modules that
import each other without cycles (function-local imports included), each concept with one owner
the others depend on, and docs/architecture.md naming every module."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "albert_ray"
# The workflows (finetune, pretrain, label, inference) over a shared core (model, tasks, io, runtime,
# reports); the top level keeps what every part uses.
SUBPACKAGES = {"model", "tasks", "io", "finetune", "pretrain", "label", "inference", "runtime", "reports"}
TOP_LEVEL = {"__init__", "cli", "errors", "paths", "typedconfig", "spec", "modeldir"}
# Which subpackage may import which: the core never reaches into a workflow.
CORE = {"model", "tasks", "io", "runtime", "reports"}


def modules() -> dict[str, Path]:
    """Dotted module name inside the package ('model.encoder', 'cli') -> its file."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported(node: ast.AST, names: set[str]) -> set[str]:
    """The package modules one import statement names."""
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "albert_ray":
        base = node.module.split(".", 1)[1] if "." in node.module else ""
        candidates = {f"{base}.{a.name}".strip(".") for a in node.names} | {base}
        return {c for c in candidates if c in names}
    if isinstance(node, ast.Import):
        return {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("albert_ray.")} & names
    return set()


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (subpackage inits left out)."""
    found = modules()
    names = set(found) - SUBPACKAGES
    graph = {}
    for name, path in found.items():
        if name in SUBPACKAGES:
            continue
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            deps |= imported(node, names)
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_cycle_finder_finds_a_cycle_and_a_clean_graph_has_none():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_package_modules_import_each_other_without_cycles():
    graph = import_graph()
    assert {
        "tasks.registry",
        "inference.export",
        "reports.page",
        "tasks.crf_graph",
        "finetune.worker",
    } <= set(graph)
    assert "tasks.registry" in graph["inference.export"] and "tasks.crf_graph" in graph["tasks.registry"]
    assert cycles(graph) == []


def test_the_tree_is_the_subpackages_and_the_shared_top_level_only():
    found = modules()
    top = {name for name in found if "." not in name} - SUBPACKAGES
    assert top == TOP_LEVEL
    assert {name.split(".")[0] for name in found if "." in name} == SUBPACKAGES
    for package in SUBPACKAGES:  # each says what it holds
        assert ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text(encoding="utf-8")))


def test_the_shared_core_never_imports_a_workflow():
    reaching = sorted(
        (name, dep)
        for name, deps in import_graph().items()
        for dep in deps
        if name.split(".")[0] in CORE and "." in dep and dep.split(".")[0] not in CORE
    )
    assert reaching == []


def test_the_architecture_page_names_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = sorted(
        name
        for name, path in modules().items()
        if name not in SUBPACKAGES
        and name != "__init__"
        and f"{path.relative_to(PACKAGE).as_posix()}" not in page
    )
    assert missing == []


def test_the_model_directory_and_resume_file_names_have_one_owner():
    """Only ``modeldir`` spells the files of a model directory and of a training checkpoint's
    resume state; everything else names them through its constants (changing the layout is one
    edit). ``spec.py`` names model.json only as the label of its error messages."""
    from albert_ray import modeldir

    owned = [
        modeldir.SPEC_FILE,
        modeldir.WEIGHTS_FILE,
        modeldir.JOB_FILE,
        modeldir.METRICS_FILE,
        modeldir.REPORT_FILE,
        modeldir.STATE_FILE,
        modeldir.OPTIMIZER_FILE,
    ]
    found = []
    for name, path in modules().items():
        if name == "modeldir":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in owned:
                found.append((name, node.value))
    assert found == [("spec", "model.json")], found
