"""Every ``python`` block of ``docs/api.md`` runs verbatim, in order, in one namespace.

The blocks run from a scratch folder in which ``examples`` links to this repository's
``examples/``; ``$TEEFLOW_HOME`` and the working directory are restored afterwards.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "api.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[str]:
    return _BLOCK.findall(DOC.read_text())


def test_the_examples_are_complete() -> None:
    found = blocks()
    assert len(found) >= 10
    for code in found:
        assert "..." not in code and "…" not in code  # nothing elided


def test_docs_api_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GRPC_VERBOSITY", "NONE")
    monkeypatch.setenv("TEEFLOW_HOME", str(tmp_path / "unused-home"))
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs_api"}
    for index, code in enumerate(blocks()):
        try:
            exec(compile(code, f"docs/api.md block {index + 1}", "exec"), namespace)
        except BaseException:
            print(f"--- block {index + 1} failed:\n{code}")
            raise
    out = capsys.readouterr().out
    assert out.count("refused:") == 3
    assert "agreement version 2" in out
    assert "done" in out and "stopped ['study-2', 'study-1']" in out
    assert "2 rounds;" in out and "rows 400" in out
    assert os.environ["TEEFLOW_HOME"] == str(tmp_path / "unused-home")
