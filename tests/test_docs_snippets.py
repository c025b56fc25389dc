"""Every Python example in the README and the manual is checked against the code, so none can
rot: it compiles, what it imports from poolkit exists, every ``django_poolkit.*`` path it names
imports, and every ``POOLKIT`` it writes passes validation with nothing to report."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import environ
import pytest
from django.utils.module_loading import import_string

from django_poolkit.conf import build_settings

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]
BLOCK = re.compile(r"^( *)\.\. code-block:: python\n((?:\1 +.*\n|[ \t]*\n)+)", re.M)


def _python_blocks() -> list[Any]:
    blocks = []
    for path in DOCUMENTS:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 1
            source = _dedent(match.group(2))
            blocks.append(pytest.param(source, id=f"{path.relative_to(ROOT)}:{line}"))
    return blocks


def _dedent(block: str) -> str:
    lines = block.splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    lines = [line[indent:] for line in lines]
    if any(line.startswith(">>> ") for line in lines):
        # An interactive session: keep the statements, drop the output.
        lines = [line[4:] for line in lines if line.startswith((">>> ", "... "))]
    return "\n".join(lines) + "\n"


def _tree(source: str) -> ast.Module:
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    return compile(source, "<example>", "exec", flags=flags, dont_inherit=True)  # type: ignore[no-any-return]


def _resolve(dotted: str) -> object:
    try:
        return importlib.import_module(dotted)
    except ImportError:
        return import_string(dotted)


def test_the_documents_have_python_examples():
    assert len(_python_blocks()) >= 20


@pytest.mark.parametrize("source", _python_blocks())
def test_example_compiles_and_names_what_exists(source):
    tree = _tree(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("django_poolkit"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name} does not exist"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("django_poolkit"):
                    importlib.import_module(alias.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            dotted = node.value.removeprefix("python:")
            if re.fullmatch(r"django_poolkit(\.\w+)+", dotted):
                _resolve(dotted)


def _poolkit_value(tree: ast.Module) -> ast.expr | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "POOLKIT" for target in node.targets
        ):
            return node.value
    return None


def _aliases(poolkit: dict[str, Any]) -> set[str]:
    """Every alias the example's POOLKIT names, so validation sees them in DATABASES."""
    aliases = {"default", *poolkit.get("DATABASES", {})}
    for cluster in poolkit.get("ROUTING", {}).get("CLUSTERS", {}).values():
        aliases.add(cluster.get("primary", "default"))
        aliases.update(cluster.get("replicas", []))  # a list of aliases, or a dict keyed by them
    aliases.update(poolkit.get("HEALTH", {}).get("databases", []) or [])
    return {alias for alias in aliases if alias}


@pytest.mark.parametrize("source", _python_blocks())
def test_every_poolkit_setting_in_an_example_is_valid(source):
    value = _poolkit_value(_tree(source))
    if value is None:
        return
    # Examples read secrets from the environment the way the docs recommend (django-environ).
    expression = ast.fix_missing_locations(ast.Expression(value))
    poolkit = eval(compile(expression, "<example>", "eval"), {"env": environ.Env()})  # noqa: S307
    databases = {
        alias: {"ENGINE": "django_poolkit.db.backends.postgresql", "NAME": alias, "HOST": "db",
                "PORT": "", "USER": "app", "PASSWORD": "", "OPTIONS": {}}
        for alias in _aliases(poolkit)
    }
    settings, problems = build_settings(poolkit, databases, {})
    assert problems == []
    assert settings is not None


COMMAND = re.compile(r"^\s*\$ (?:[A-Z_]+=\S+ )*(?:python |\./)manage\.py (\w+)(.*?)$", re.M)


def _commands() -> list[Any]:
    """Every ``manage.py`` command line shown in the documents (continuation lines joined)."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text().replace("\\\n", " ")
        for match in COMMAND.finditer(text):
            line = text[: match.start()].count("\n") + 1
            found.append(pytest.param(match.group(1), match.group(2).split(),
                                      id=f"{path.relative_to(ROOT)}:{line}"))
    return found


@pytest.mark.parametrize(("name", "arguments"), _commands())
def test_every_documented_command_line_parses(name, arguments):
    from django.core.management import get_commands, load_command_class

    command = load_command_class(get_commands()[name], name)
    command.create_parser("manage.py", name).parse_args(arguments)
