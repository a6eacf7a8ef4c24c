"""Who may submit: registered miners (Ethereum address -> secure-aggregation public key) and the
binding of each address to one Flower node.

The public keys come from the chain's miner registry, or, without a chain, from the miners' own
signed registrations (fl_server.enrollment); the server never reads a miner's folder or keys. A node that once answered as address A may not answer as B later,
and A may not answer from another node: that stops one node from voting or submitting twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eth_utils import to_checksum_address


class RegistryError(ValueError):
    """An unknown miner, or an address/node binding that would be broken."""


@dataclass
class MinerRegistry:
    secagg_keys: dict[str, bytes] = field(default_factory=dict)  # checksummed address -> 33-byte key
    _node_of: dict[str, int] = field(default_factory=dict)
    _address_of: dict[int, str] = field(default_factory=dict)

    def register(self, address: str, secagg_public: bytes) -> None:
        if len(secagg_public) != 33:
            raise RegistryError("secure-aggregation public key must be 33 bytes (compressed)")
        self.secagg_keys[to_checksum_address(address)] = bytes(secagg_public)

    def key_of(self, address: str) -> bytes:
        try:
            return self.secagg_keys[to_checksum_address(address)]
        except (KeyError, ValueError) as exc:
            raise RegistryError(f"miner {address} is not registered") from exc

    def bind(self, node_id: int, address: str) -> None:
        """Bind ``address`` to ``node_id`` on first contact; refuse a conflicting binding."""
        address = to_checksum_address(address)
        self.key_of(address)
        known_node = self._node_of.get(address)
        known_addr = self._address_of.get(node_id)
        if known_node is not None and known_node != node_id:
            raise RegistryError(f"{address} already answered from node {known_node}, not {node_id}")
        if known_addr is not None and known_addr != address:
            raise RegistryError(f"node {node_id} answered as {known_addr} before, now as {address}")
        self._node_of[address] = node_id
        self._address_of[node_id] = address

    def address_of(self, node_id: int) -> str | None:
        return self._address_of.get(node_id)
