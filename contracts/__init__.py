"""On-chain half of ModelMine: Solidity sources (``contracts/src``), compiled artifacts
(``contracts/build``) and the Python client.

Entry points (imported lazily so that ``import contracts`` stays cheap):

* :class:`contracts.client.ModelMineClient` — deploy/attach, publish, register, propose, relay
  votes and reveals, settle, claim, views and events;
* :class:`contracts.chain.Chain`, :class:`contracts.chain.ChainConfig` — backends (embedded py-evm
  or JSON-RPC), signing, nonces, retries, revert decoding; :class:`contracts.chain.AnvilProcess`;
* errors: :class:`contracts.chain.ChainUnavailableError`, :class:`contracts.chain.ContractRevertError`.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ModelMineClient": "contracts.client",
    "TaskSpec": "contracts.client",
    "Chain": "contracts.chain",
    "ChainConfig": "contracts.chain",
    "AnvilProcess": "contracts.chain",
    "ChainError": "contracts.chain",
    "ChainUnavailableError": "contracts.chain",
    "ContractRevertError": "contracts.chain",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'contracts' has no attribute {name!r}")
