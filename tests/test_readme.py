"""The README's Quickstart block is what CI runs, verbatim and line by line (.ci/readme_block.py):
the block is found, holds the commands a new user needs, and its script stops at the first failing
line, also inside `a && b`, naming it."""
from __future__ import annotations

import importlib.util
import subprocess

import pytest

from conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location("readme_block", REPO_ROOT / ".ci" / "readme_block.py")
readme_block = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_block)


def test_quickstart_holds_install_demo_trainer_and_tests():
    lines = readme_block.block((REPO_ROOT / "README.md").read_text(), "Quickstart").splitlines()
    commands = [line.split("#")[0].strip() for line in lines]
    assert commands[0] == "python3 -m venv .venv && . .venv/bin/activate"
    assert "pip install -v . && python -m pyalexnet" in commands
    assert "python -m pyalexnet.train" in commands
    assert "pip install -r tests/requirements.txt && pytest" in commands
    assert not any("[test]" in c for c in commands), "installing an extra builds the extension again"


def test_block_is_the_first_under_its_heading_and_ignores_shell_comments():
    text = ("# Title\n```bash\nnot this\n```\n## Quickstart (new)\ntext\n```bash\n# a comment, no heading\n"
            "echo one\n```\n```bash\necho two\n```\n## Next\n")
    assert readme_block.block(text, "Quickstart") == "# a comment, no heading\necho one\n"
    with pytest.raises(SystemExit, match="'Next': no such heading with a fenced code block"):
        readme_block.block(text, "Next")


@pytest.mark.parametrize("failing, ran", [("false && echo skipped", "first"), ("echo a | false", "first")])
def test_checked_script_stops_at_the_first_failing_line(tmp_path, failing, ran):
    script = readme_block.checked(f"echo first\n{failing}\necho never\n")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1
    assert "first" in r.stdout and "\nnever" not in r.stdout
    assert f"README line failed (exit 1): {failing}" in r.stdout
    assert readme_block.checked("echo 'it''s' ok\n").count("echo '+ ") == 1
    ok = subprocess.run(["bash", "-c", readme_block.checked("cd /\necho \"it's\" $PWD\n")], capture_output=True,
                        text=True, cwd=tmp_path)
    assert ok.returncode == 0 and "it's /" in ok.stdout and "+ echo \"it's\" $PWD" in ok.stdout
