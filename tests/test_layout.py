"""The package's shape (docs/architecture.md): no import cycles, imports at the top, the library
never reaching into the apps, the CLI or the benchmarks, kernels knowing nothing of fastmine."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastmine"
KERNELS = ROOT / "kernels"
APPS = ("fastmine.apps", "fastmine.cli")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(node, module: str, is_package: bool) -> list:
    """Absolute names a (from-)import statement refers to."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module if is_package else module.rsplit(".", 1)[0]
    if node.level:
        base = ".".join(base.split(".")[: len(base.split(".")) - node.level + 1])
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module
    return [target] + [f"{target}.{a.name}" for a in node.names]


def _imports():
    """{module: (imports at module level, imports inside functions or classes)} of fastmine."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text())
        top, nested = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = _resolve(node, module, path.name == "__init__.py")
                (top if node in tree.body else nested).update(names)
        out[module] = (top, nested)
    return out


MODULES = _imports()


def _internal(names):
    return {n for n in names if n in MODULES}


def test_no_import_cycles():
    graph = {m: _internal(top) - {m} for m, (top, _) in MODULES.items()}
    # a package imports its submodules: only edges into other packages' modules can close a cycle
    for m in graph:
        graph[m] = {d for d in graph[m] if not d.startswith(m + ".")}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


# Third-party packages that may be imported inside a function, where they are used: each takes
# long to import (or is optional) and few paths need it, so `import fastmine` and the CLI leave
# them out (README "Start-up"). Everything else, fastmine's own modules first, is imported at
# the top, where the cycle and layer checks see it.
LAZY_THIRD_PARTY = {
    "sklearn",                      # the built-in digits (fastmine.data)
    "scipy",                        # StyleGAN3's filters
    "matplotlib",                   # plots of vector samples
    "torchmetrics",                 # FID and the Inception network
    "accelerate",                   # multi-process runs and trackers
    "torch.distributed.fsdp",       # dist.shard=fsdp2
    "torch.distributed.device_mesh",
    "deepspeed",                    # dist.shard=zero3 (optional extra)
    "pytorch_pretrained_biggan",    # BigGAN (optional extra)
}


def _lazy_allowed(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in LAZY_THIRD_PARTY)


def test_library_imports_stay_at_the_top():
    hidden = {m: sorted(n for n in nested if not _lazy_allowed(n)) for m, (_, nested) in MODULES.items()}
    hidden = {m: v for m, v in hidden.items() if v}
    assert not hidden, (f"imports inside functions: {hidden}; fastmine's own hide cycles, and a third-party "
                        "one belongs at the top unless it is slow to import (LAZY_THIRD_PARTY)")


def test_the_top_level_check_sees_a_hidden_import(monkeypatch):
    """A planted function-local import of a fastmine module, and of a light third-party one,
    both fail; a listed heavy one passes."""
    for name, fails in (("fastmine.files", True), ("numpy", True), ("sklearn.datasets", False)):
        monkeypatch.setattr(__import__(__name__), "MODULES", {"fastmine.a": (set(), {name})})
        if fails:
            with pytest.raises(AssertionError, match="imports inside functions"):
                test_library_imports_stay_at_the_top()
        else:
            test_library_imports_stay_at_the_top()


def test_the_library_does_not_import_apps_cli_or_benchmarks():
    for module, (top, nested) in MODULES.items():
        if module.startswith(APPS):
            continue
        bad = sorted(n for n in top | nested if n.startswith(APPS + ("fastmine_benchmarks",)))
        assert not bad, f"{module} imports {bad}: the library must not depend on the apps, the CLI or the benchmarks"


# docs/architecture.md: a module may import modules of lower layers and of its own (the parts use
# each other); config, methods and hub import nothing of fastmine
LAYERS = {
    0: ("config", "methods", "hub"),
    1: ("latent", "nets", "miner", "samplers", "losses", "data", "images", "sparse", "metrics", "trackers",
        "zoo", "augment", "regularizers", "threads", "ema"),
    2: ("multi", "fusion", "inversion"),
    3: ("files", "checkpoints", "runfolder"),
    4: ("conditional",),
    5: ("trainer", "distributed", "sharded"),
    6: ("runs",),
    7: ("api", "evaluation", ""),
    8: ("apps", "cli"),
}


def _layer(module: str) -> int:
    head = module.split(".")[1] if "." in module else ""
    return next(layer for layer, names in LAYERS.items() if head in names)


def test_imports_follow_the_layers_of_the_readme_table():
    for module, (top, _) in MODULES.items():
        mine = _layer(module)
        for dep in sorted(_internal(top)):
            if dep == "fastmine" and module.startswith("fastmine.apps"):
                continue  # the apps may use the public face
            if module.startswith(dep + "."):
                continue  # a package's __init__ importing its own submodules
            allowed = _layer(dep) < mine or (_layer(dep) == mine and mine != 0)
            assert allowed, f"{module} (layer {mine}) imports {dep} (layer {_layer(dep)})"


def test_kernels_know_nothing_of_fastmine():
    for path in KERNELS.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fastmine"):
                pytest.fail(f"kernels/{path.name} imports {node.module}")
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("fastmine") for a in node.names), path.name


def test_the_cycle_check_sees_a_cycle(tmp_path, monkeypatch):
    """The graph walk above finds a planted two-module cycle (so an empty result means something)."""
    planted = {"fastmine.a": ({"fastmine.b"}, set()), "fastmine.b": ({"fastmine.a"}, set())}
    monkeypatch.setattr(__import__(__name__), "MODULES", planted)
    with pytest.raises(pytest.fail.Exception, match="import cycle: fastmine.a -> fastmine.b -> fastmine.a"):
        test_no_import_cycles()
