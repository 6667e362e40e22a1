"""``python -m teeflow.fl.aggregator_main [run] OPTIONS``: the aggregator's lean entry point
(:func:`teeflow.fl.entry.aggregator_main`; options as ``teeflow aggregator run``)."""

from __future__ import annotations

from teeflow.fl.entry import aggregator_main

__all__ = ["aggregator_main"]

if __name__ == "__main__":
    aggregator_main()
