"""The public API, the README's Python examples, and a command line that answers at once."""

from __future__ import annotations

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
