"""The TypeScript SDK's own suite (`node --test`, sdk/typescript/test) against a real server."""

import shutil
import subprocess

from tests.conftest import ROOT

SDK = ROOT / "sdk" / "typescript"
SLOW = {"MOONBORN_DEMO_DELAY_MS": "40", "MOONBORN_DEMO_REPLY_TOKENS": "60"}


def test_typescript_sdk_suite_passes_against_a_live_server(server_factory):
    server = server_factory(**SLOW)
    env = {
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "MOONBORN_BASE_URL": server.base_url,
        "MOONBORN_API_KEY": server.keys["alice"],
        "MOONBORN_API_KEY_BOB": server.keys["bob"],
        "MOONBORN_REPLY_TOKENS": SLOW["MOONBORN_DEMO_REPLY_TOKENS"],
    }
    node = shutil.which("node")
    assert node is not None, "Node 18+ is required"
    done = subprocess.run(
        [node, "--test", "--test-reporter=spec", "test/sdk.test.mjs"],
        cwd=SDK,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout or "ℹ fail 0" in done.stdout, done.stdout
    assert "ℹ pass 9" in done.stdout, done.stdout


def test_typescript_sdk_unit_suite_passes():
    # Scripted answers through the SDK's `fetch` option: line splitting and where the key goes, no server needed.
    node = shutil.which("node")
    assert node is not None, "Node 18+ is required"
    done = subprocess.run(
        [node, "--test", "--test-reporter=spec", "test/unit.test.mjs"],
        cwd=SDK,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ℹ pass 18" in done.stdout and "ℹ fail 0" in done.stdout, done.stdout


def test_committed_javascript_is_built_from_the_typescript_source(tmp_path):
    tsc = SDK / "node_modules" / ".bin" / "tsc"
    assert tsc.exists(), "run `npm ci` in sdk/typescript (scripts/install --dev does)"
    done = subprocess.run(
        [str(tsc), "-p", ".", "--outDir", str(tmp_path)], cwd=SDK, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("index.js", "index.d.ts"):
        assert (tmp_path / name).read_text() == (SDK / "dist" / name).read_text(), (
            f"dist/{name} is stale: npm run build"
        )
