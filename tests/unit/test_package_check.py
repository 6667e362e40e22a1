"""Issue 14, item 3: ``package build`` checks that every entrypoint imports, in a child
process, and says which one does not and what to do."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from teeflow.cli import fl_cmds
from teeflow.fl.package import PackageError, build_package
from teeflow.fl.package_check import check_entrypoints

MANIFEST = (
    "name: demo\nversion: 1.0.0\nentrypoints:\n  train: task:train\n"
    "  validate: task:validate\nfunctions:\n  init: other:init\n"
    "requirements: [\"not-installed-lib>=1\"]\n"
)


def _package(root: Path, task: str, other: str = "def init(config):\n    return {}\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "teeflow.yaml").write_text(MANIFEST)
    (root / "task.py").write_text(task)
    (root / "other.py").write_text(other)
    return root


GOOD = (
    "print('package output on stdout must not break the check')\n"
    "def train(a, c):\n    return a, 1, {}\n"
    "def validate(a, c):\n    return 1, {}\n"
)


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test"""

    fl_cmds.register(app)
    return app


def test_a_package_whose_train_does_not_import_is_refused(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "bad", "import not_installed_lib\n" + GOOD)
    archive, digest = build_package(pkg)  # the library still packs it
    with pytest.raises(PackageError) as exc:
        check_entrypoints(archive, digest)
    text = str(exc.value)
    assert "train: importing 'task'" in text and "validate: importing 'task'" in text
    assert "ModuleNotFoundError: No module named 'not_installed_lib'" in text
    assert "(task:train)" in text and "init" not in text.split("—", maxsplit=1)[0]
    assert "not-installed-lib>=1" in text and "--no-check" in text  # what to do
    assert "not_installed_lib" not in sys.modules  # imported in the child only
    out = CliRunner().invoke(_app(), ["package", "build", str(pkg), "-o", str(tmp_path / "x")])
    assert out.exit_code != 0 and isinstance(out.exception, PackageError)
    assert not (tmp_path / "x").exists()  # nothing written
    out = CliRunner().invoke(
        _app(), ["package", "build", str(pkg), "-o", str(tmp_path / "x"), "--no-check"]
    )
    assert out.exit_code == 0, out.output


def test_a_missing_attribute_or_a_crashing_module_is_named(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "p", GOOD, other="raise RuntimeError('bad config at import')\n")
    with pytest.raises(PackageError, match=r"init: .*RuntimeError: bad config at import"):
        check_entrypoints(*build_package(pkg))
    pkg = _package(tmp_path / "q", GOOD.replace("def validate", "def validat"))
    with pytest.raises(PackageError, match=r"validate: task:validate is missing"):
        check_entrypoints(*build_package(pkg))
    pkg = _package(tmp_path / "r", "import sys\nsys.exit(3)\n")
    with pytest.raises(PackageError, match="exited with status 3"):
        check_entrypoints(*build_package(pkg))


def test_a_good_package_builds_and_reports_what_was_checked(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "ok", GOOD)
    out = CliRunner().invoke(
        _app(), ["package", "build", str(pkg), "-o", str(tmp_path / "ok.tar"), "--json"]
    )
    assert out.exit_code == 0, (out.output, out.exception)
    doc = json.loads(out.output)
    assert doc["checked"] == ["init", "train", "validate"] and doc["name"] == "demo"
    assert doc["digest"] == build_package(pkg)[1].hex()


def test_a_package_needing_torch_names_the_extra(tmp_path: Path) -> None:
    """Issue 14, item 9: without PyTorch the error names ``pip install 'teeflow[torch]'``
    (simulated: a package importing ``torch.nonexistent_submodule_for_test``)."""
    pkg = _package(tmp_path / "t", "import torch.nonexistent_submodule_for_test\n" + GOOD)
    with pytest.raises(PackageError) as exc:
        check_entrypoints(*build_package(pkg))
    assert "pip install 'teeflow[torch]'" in str(exc.value)
