"""Every package declares ``__all__``, every listed name resolves, and the exports equal the
table in ``docs/api.md`` ("Package exports")."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "teeflow"
_ROW = re.compile(r"^\| `(teeflow[\w.]*)` \| (.*) \|$", re.M)


def packages() -> list[str]:
    out = []
    for init in sorted(SRC.rglob("__init__.py")):
        parts = init.parent.relative_to(SRC).parts
        out.append(".".join(("teeflow", *parts)))
    return out


def documented() -> dict[str, set[str]]:
    text = (REPO / "docs" / "api.md").read_text()
    table = text[text.index("## Package exports"):]
    return {m.group(1): set(re.findall(r"`([^`]+)`", m.group(2)))
            for m in _ROW.finditer(table)}


def test_every_package_exports_what_the_docs_list() -> None:
    docs = documented()
    problems = []
    for name in packages():
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            problems.append(f"{name} has no __all__")
            continue
        for attr in exported:
            if not hasattr(module, attr):
                problems.append(f"{name}.__all__ names {attr}, which does not exist")
        if name not in docs:
            problems.append(f"{name} is missing from the docs/api.md export table")
        elif set(exported) != docs[name]:
            problems.append(f"{name}: __all__ {sorted(exported)} but docs/api.md lists "
                            f"{sorted(docs[name])}")
    extra = set(docs) - set(packages())
    problems += [f"docs/api.md lists {n}, which is not a package" for n in sorted(extra)]
    assert not problems, "\n".join(problems)


def test_lazy_names_resolve_without_loading_their_layers_on_import() -> None:
    code = ("import sys, teeflow, teeflow.fl, teeflow.app.replica; "
            "assert 'teeflow.api.party' not in sys.modules; "
            "assert 'teeflow.fl.simulation' not in sys.modules; "
            "assert 'teeflow.app.client' not in sys.modules; "
            "from teeflow.api.party import Party; from teeflow.fl.simulation import simulate; "
            "from teeflow.app.client import Client; "
            "assert teeflow.Party is Party and teeflow.fl.simulate is simulate; "
            "assert teeflow.app.Client is Client and 'Client' in dir(teeflow.app); "
            "assert 'Party' in dir(teeflow) and 'simulate' in dir(teeflow.fl)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
