"""The README's curl walkthrough works exactly as written (only the server address differs)."""

import re
import subprocess

from tests.conftest import ROOT


def walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Walkthrough (curl)", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]


def test_readme_walkthrough_runs_as_written(server, tmp_path):
    script = walkthrough()
    assert "MB=http://127.0.0.1:8000\n" in script
    script = script.replace("MB=http://127.0.0.1:8000\n", f"MB={server.base_url}\n")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "KEY": server.keys["alice"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("retry: 3000\nid: 1\nevent: pipeline.started\n")
    assert out.count("event: step.completed\n") == 6
    assert "event: pipeline.completed\n" in out
    assert '"status":"ready"' in out
    assert "event: message.started\n" in out
    assert out.count("event: token\n") == 24
    assert "event: completed\n" in out
    assert '"driftScore":' in out and '"messageId":"msg_' in out
    assert '"kind":"chat"' in out and '"kind":"persona"' in out
