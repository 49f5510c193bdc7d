""".env.example lists every environment variable the service reads, and nothing else."""

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

# What is not the service: its tests, benchmarks and client SDKs.
NOT_THE_SERVICE = {"tests", "bench", "sdk"}
# The methods of django-environ's `env = environ.Env()` in moonborn_site/settings.py, which read a variable by name.
ENV_READERS = {"str", "bool", "int", "float", "list", "tuple", "dict", "json", "url", "db", "db_url", "cache", "path"}
# `NAME=value` or `# NAME=value`: .env.example shows most settings commented out at their default.
ASSIGNMENT = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)


def service_files() -> list[Path]:
    packages = [
        path.parent
        for path in ROOT.glob("*/__init__.py")
        if path.parent.name not in NOT_THE_SERVICE and not path.parent.name.startswith(".")
    ]
    files = [*ROOT.glob("*.py")]
    for package in packages:
        files += [path for path in package.rglob("*.py") if "migrations" not in path.relative_to(package).parts]
    return sorted(files)


def is_os_environ(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    ) or (isinstance(node, ast.Name) and node.id == "environ")


def read_names(node: ast.AST) -> ast.expr | None:
    """The expression naming the variable that ``node`` reads from the environment, if it reads one."""
    if isinstance(node, ast.Subscript) and is_os_environ(node.value):
        return node.slice
    if (
        isinstance(node, ast.Compare)
        and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops)
        and any(is_os_environ(side) for side in node.comparators)
    ):
        return node.left
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    # Not setdefault: manage.py and moonborn_site/asgi.py use it to name Django's settings module, which is no setting.
    if isinstance(func, ast.Attribute) and func.attr in {"get", "pop"} and is_os_environ(func.value):
        return node.args[0]
    if isinstance(func, ast.Attribute) and func.attr == "getenv":
        return node.args[0]
    if isinstance(func, ast.Name) and func.id in {"getenv", "env"}:
        return node.args[0]
    if isinstance(func, ast.Attribute) and func.attr in ENV_READERS and isinstance(func.value, ast.Name):
        return node.args[0] if func.value.id == "env" else None
    return None


def variables_read() -> tuple[set[str], list[str]]:
    """The names the service reads, and where it reads one whose name is not a literal (which no scan can list)."""
    names: set[str] = set()
    unnamed: list[str] = []
    for path in service_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            name = read_names(node)
            if name is None:
                continue
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                names.add(name.value)
            else:
                unnamed.append(f"{path.relative_to(ROOT)}:{name.lineno}")
    return names, unnamed


def test_the_scan_covers_the_service_packages():
    packages = {path.relative_to(ROOT).parts[0] for path in service_files() if len(path.relative_to(ROOT).parts) > 1}
    assert packages == {"accounts", "chat", "llm", "moonborn_site", "personas", "runs", "web"}


def test_the_scan_finds_every_way_of_reading_a_variable():
    source = (
        "import os\n"
        "from os import environ, getenv\n"
        "a = os.environ.get('A')\n"
        "b = os.environ['B']\n"
        "c = os.getenv('C', '')\n"
        "d = getenv('D')\n"
        "e = env('E')\n"
        "f = env.bool('F', default=False)\n"
        "g = environ.get('G')\n"
        "h = 'H' in os.environ\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'moonborn_site.settings')\n"
        "i = other.str('I')\n"
        "j = os.environ.get(name)\n"
    )
    found = [read_names(node) for node in ast.walk(ast.parse(source))]
    names = sorted(n.value for n in found if isinstance(n, ast.Constant))
    assert names == ["A", "B", "C", "D", "E", "F", "G", "H"]
    assert sum(isinstance(n, ast.Name) for n in found) == 1


def test_env_example_lists_exactly_the_variables_the_service_reads():
    names, unnamed = variables_read()
    listed = set(ASSIGNMENT.findall((ROOT / ".env.example").read_text(encoding="utf-8")))
    assert unnamed == []
    assert sorted(names - listed) == []
    assert sorted(listed - names) == []
