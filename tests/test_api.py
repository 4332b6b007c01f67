"""The public API, the README's Python examples, and a command line that answers at once."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vidadapt
from vidadapt import cli

README = Path(__file__).resolve().parents[1] / "README.md"
# The README's examples name files and sizes of real models; the test runs them on the
# packaged tiny image model instead.
TINY = {
    'backbone="vit_b16_clip", pretrained="ViT-B-16.pt"':  # a CLIP file: both towers
    'backbone="vit_tiny_clip", pretrained="builtin:clip_tiny_synthetic"',
    '"ViT-B-16.pt"': '"builtin:vit_tiny_synthetic"',
    '"vit_b16_clip"': '"vit_tiny"',
    "224, 224": "32, 32",
}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_public_api_resolves_and_is_listed():
    assert set(vidadapt.__all__) == {"__version__", *vidadapt._API}
    for name in vidadapt.__all__:
        assert getattr(vidadapt, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'create_modle'"):
        vidadapt.create_modle  # noqa: B018


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text()))))
def test_readme_python_examples_run(index):
    code = python_blocks(README.read_text())[index]
    for real, tiny in TINY.items():
        code = code.replace(real, tiny)
    exec(compile(code, f"README.md python block {index}", "exec"), {})


def test_the_readme_has_python_examples():
    assert len(python_blocks(README.read_text())) >= 1


@pytest.mark.parametrize("argv", [["--version"], ["--help"], []])
def test_help_and_version_do_not_import_torch(argv):
    script = ("import sys\nfrom vidadapt.cli import main\n"
              f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
              "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_parses_its_own_arguments(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: vidadapt {command}")


def test_make_shows_pips_progress():
    """The install step takes minutes on a fresh machine: pip must not be told to be quiet."""
    makefile = (README.parent / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line]
    assert installs and not any(re.search(r"\s-q\b|--quiet", line) for line in installs)


def module_imports() -> dict[str, set[str]]:
    """vidadapt's modules → the vidadapt modules each imports when it loads (module level;
    not under ``if TYPE_CHECKING``)."""
    package = Path(vidadapt.__file__).parent
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in names.items():
        package_of = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package_of.rsplit(".", node.level - 1)[0] if node.level > 1 else package_of
                target = f"{base}.{node.module}" if node.module else base
            elif isinstance(node, ast.ImportFrom):
                target = node.module
            else:
                continue
            for alias in node.names:  # `from . import aim` imports the module vidadapt.x.aim
                imported.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in names
                             else target)
        graph[name] = {m for m in imported if m in names and m != name}
    return graph


def assert_acyclic(graph: dict[str, set[str]]) -> None:
    visiting, done = set(), set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in visiting, f"import cycle: {' -> '.join(path + (module,))}"
        if module in done:
            return
        visiting.add(module)
        for imported in graph[module]:
            visit(imported, path + (module,))
        visiting.discard(module)
        done.add(module)

    for module in graph:
        visit(module, ())


def test_the_import_graph_has_no_cycles_and_methods_sit_below_the_model():
    graph = module_imports()
    assert_acyclic(graph)
    # The rooms too (vidadapt.methods, vidadapt.clip, ...): their arrows all point one way.
    rooms: dict[str, set[str]] = {}
    for module, imported in graph.items():
        room = ".".join(module.split(".")[:2])
        rooms.setdefault(room, set()).update(
            r for r in (".".join(m.split(".")[:2]) for m in imported) if r != room)
    assert_acyclic({room: rooms.get(room, set()) & rooms.keys() for room in rooms})
    upper = ("vidadapt.models", "vidadapt.engine", "vidadapt.commands", "vidadapt.export")
    for module, imported in graph.items():
        if module.startswith(("vidadapt.methods", "vidadapt.clip", "vidadapt.backbones",
                              "vidadapt.checkpoints")):
            assert not {m for m in imported if m.startswith(upper)}, module
        if module.startswith("vidadapt.methods.") and module != "vidadapt.methods.registry":
            assert "vidadapt.methods.registry" not in imported, module
