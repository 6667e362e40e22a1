"""Two banks compute joint statistics over their customer tables without revealing them.

One command, emulated TEE (no hardware needed)::

    python examples/joint-statistics/run.py

Starts a local federation (KBS + compute worker on 127.0.0.1, emulated SGX), then:
bank-a and bank-b each seal their customer table (Arrow when pyarrow is installed, else a
dict of numpy columns) for the worker, granting only ``jointstats:summary`` and
``jointstats:logistic_regression`` with results sealed to both banks; the worker runs both
functions; each bank opens the same sealed results; the regulator (a party of the agreement,
not a recipient) cannot; the lineage is checked against the KBS audit log. The script finally
checks the results equal a plaintext computation over the concatenated tables.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from teeflow.compute import NotARecipient
from teeflow.compute.sandbox import local_federation

HERE = Path(__file__).resolve().parent
BANKS = ("bank-a", "bank-b")
FUNCTIONS = ["jointstats:summary", "jointstats:logistic_regression"]


def customers(seed: int, rows: int) -> dict[str, np.ndarray]:
    """A synthetic customer table (columns: age, income, balance, tenure, defaulted)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, rows).astype(np.float64)
    income = rng.lognormal(10.5 + 0.1 * seed, 0.4, rows)
    balance = rng.normal(5_000, 2_500, rows)
    tenure = rng.integers(0, 30, rows).astype(np.float64)
    z = -1.0 - 0.02 * (age - 45) - 1.2 * (income / income.mean() - 1) + 0.0003 * balance \
        - 0.05 * tenure
    defaulted = (rng.random(rows) < 1 / (1 + np.exp(-z))).astype(np.float64)
    return {"age": age, "income": income, "balance": balance, "tenure": tenure,
            "defaulted": defaulted}


def as_table(columns: dict[str, np.ndarray]) -> Any:
    if importlib.util.find_spec("pyarrow") is None:
        return columns
    import pyarrow as pa

    return pa.table(columns)


def main() -> int:
    tables = {"bank-a": customers(1, 4_000), "bank-b": customers(2, 6_000)}
    with tempfile.TemporaryDirectory(prefix="teeflow-joint-stats-") as tmp, local_federation(
        Path(tmp), HERE / "package",
        parties={"bank-a": ["data-owner"], "bank-b": ["data-owner"],
                 "regulator": ["result-recipient"]},
        readers=BANKS, recipients=[*BANKS, "regulator"], federation="joint-stats",
        platform="emulated-sgx",
    ) as fed:
        a, b = fed.party("bank-a"), fed.party("bank-b")
        teeu = a.teeu(fed.worker_url)
        print(f"compute worker {fed.worker_url}: package {teeu.info['package']['name']} "
              f"{teeu.info['package']['digest'][:16]}…, measurement "
              f"{teeu.info['measurement'][:16]}… (EMULATED TEE)")
        sealed = [
            bank.seal(as_table(tables[bank.name]), allow=FUNCTIONS, recipients=list(BANKS),
                      to=bank.teeu(fed.worker_url))
            for bank in (a, b)
        ]
        for s in sealed:
            print(f"{s.owner} sealed its table: {s.size} bytes as {s.id[:40]}…")
        results = {fn: teeu.run(fn, *sealed) for fn in FUNCTIONS}
        opened = {fn: (a.open(r), b.open(r)) for fn, r in results.items()}
        for fn, (va, vb) in opened.items():
            assert va == vb, "both banks must see the same value"
            print(f"\n{fn} (sealed to {', '.join(results[fn].recipients)}):")
            print(json.dumps(va, indent=2)[:1200])
        try:
            fed.party("regulator").open(results[FUNCTIONS[0]])
            print("ERROR: the regulator opened a result it was not granted")
            return 1
        except NotARecipient:
            print("\nregulator: not a recipient — cannot open the results (as agreed)")
        audit = a.audit_lineage(results[FUNCTIONS[1]])
        print(f"lineage of the regression verified in the KBS audit log (entry "
              f"{audit.counter_seq}); inputs: {', '.join(o for o, _ in audit.grants.values())}")
        # check against plaintext (only possible here because this script made both tables)
        spec = importlib.util.spec_from_file_location("jointstats", HERE / "package" / "stats.py")
        assert spec is not None and spec.loader is not None
        ref = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ref)
        plain = ref.summary(tables["bank-a"], tables["bank-b"])
        assert abs(plain["mean"]["income"] - opened[FUNCTIONS[0]][0]["mean"]["income"]) < 1e-6
        print("results match the plaintext computation over the joined tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
