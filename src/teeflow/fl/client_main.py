"""``python -m teeflow.fl.client_main [run] OPTIONS``: a client's lean entry point
(:func:`teeflow.fl.entry.client_main`; options as ``teeflow client run``)."""

from __future__ import annotations

from teeflow.fl.entry import client_main

__all__ = ["client_main"]

if __name__ == "__main__":
    client_main()
