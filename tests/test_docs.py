"""The documentation site builds strictly (broken links, bad docstrings fail), and the CLI page lists every option
the parser has."""

import re
import subprocess
import sys
from pathlib import Path

from entropy_importance.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strictly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "Prune a copy of" in api  # prune()'s docstring was rendered, not just its name


def test_cli_page_documents_every_option():
    page = (ROOT / "docs" / "cli.md").read_text()
    documented = set(re.findall(r"`(--[a-z][a-z-]*)", page))
    options = {o for action in build_parser()._actions for o in action.option_strings if o.startswith("--")}
    assert options - {"--help"} <= documented, sorted(options - documented - {"--help"})
