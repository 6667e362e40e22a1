"""Confidential model serving: the attested Open Inference Protocol server (role ``serve``)
and its end-to-end encrypting client (issue 12). Guide: ``docs/serve.md``.

::

    from teeflow.serve import Client
    with Client("https://serve.example:8443", pin="pin.json", party=keys) as c:
        out = c.infer({"input": images})   # verifies the server's attestation first

Modules: :mod:`~teeflow.serve.workload` (attest, model key, usage), :mod:`~teeflow.serve.server`
(the HTTPS API, ``teeflow serve``), :mod:`~teeflow.serve.client` (the SDK; :class:`Client` is
its name here), :mod:`~teeflow.serve.oip`, :mod:`~teeflow.serve.e2e`,
:mod:`~teeflow.serve.access`, :mod:`~teeflow.serve.model`, :mod:`~teeflow.serve.sandbox`.
"""

from __future__ import annotations

from teeflow.serve.client import Client

__all__ = ["Client"]
