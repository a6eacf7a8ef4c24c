// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ModelMineBase} from "./ModelMineBase.sol";

/// @title MinerRegistry — miner registration with stake and secure-aggregation key, stake lock
/// @notice A miner bonds at least the network's `minStake` (directly with `register`, or through a
///         relayer with `registerFor` and the miner's signature; the stake is the miner's either way and
///         only the miner can withdraw it). Stake is slashed for missing or invalid reveals. It is
///         withdrawn in two steps (`requestUnstake`, then `withdrawStake` after the unbonding period)
///         and only once every round the miner committed in has ended (settled, rejected or expired):
///         `openTasks` counts the tasks with such a participation, released by `releaseTasks`.
abstract contract MinerRegistry is ModelMineBase {
    bytes32 internal constant REGISTRATION_TYPEHASH =
        keccak256("Registration(address miner,bytes secaggKey,uint256 nonce,uint256 deadline)");

    /// @notice Register the caller with `msg.value` as stake and its secure-aggregation public key (33 bytes).
    function register(bytes calldata secaggKey) external payable whenNotPaused {
        _register(msg.sender, secaggKey);
    }

    /// @notice Register miner `account` on its behalf: (r, vs) is the miner's EIP-712 signature of
    ///         Registration(account, secaggKey, registrationNonce(account), deadline) in EIP-2098 compact form
    ///         (r, vs). `msg.value` becomes the miner's stake (the relayer cannot withdraw it; only the miner can).
    function registerFor(address account, bytes calldata secaggKey, uint256 deadline, bytes32 r, bytes32 vs)
        external
        payable
        whenNotPaused
    {
        if (block.timestamp > deadline) revert SignatureExpired();
        bytes32 digest = _hashTypedDataV4(
            keccak256(abi.encode(REGISTRATION_TYPEHASH, account, keccak256(secaggKey), _registrationNonces[account], deadline))
        );
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, r, vs);
        if (err != ECDSA.RecoverError.NoError || signer != account || account == address(0)) revert BadSignature();
        _register(account, secaggKey);
    }

    /// @notice Add `msg.value` to the caller's stake (an unbonding miner stays unbonding).
    function addStake() external payable {
        Miner storage m = _miners[msg.sender];
        if (!m.registered) revert NotRegistered(msg.sender);
        if (msg.value == 0) revert InsufficientStake(msg.sender);
        m.stake += uint128(msg.value);
        emit StakeAdded(msg.sender, msg.value, m.stake);
    }

    /// @notice Start unbonding (no new commits); the stake stays slashable until withdrawn.
    function requestUnstake() external {
        Miner storage m = _miners[msg.sender];
        if (!m.registered) revert NotRegistered(msg.sender);
        if (m.unlockAt != 0) revert Unbonding(msg.sender);
        uint64 unlockAt = uint64(block.timestamp) + unbondingPeriod;
        m.unlockAt = unlockAt;
        emit UnstakeRequested(msg.sender, unlockAt);
    }

    /// @notice Release miner `account`'s participations in `taskIds` whose round has ended (anyone may call;
    ///         a participation still in progress is left alone).
    function releaseTasks(address account, uint256[] calldata taskIds) external {
        _release(account, taskIds);
    }

    /// @notice Withdraw the whole remaining stake after unbonding and deregister. Releases the caller's
    ///         ended participations in `releaseTaskIds` first; reverts OpenRounds while any remains.
    function withdrawStake(uint256[] calldata releaseTaskIds) external nonReentrant returns (uint256 amount) {
        _release(msg.sender, releaseTaskIds);
        Miner storage m = _miners[msg.sender];
        if (!m.registered) revert NotRegistered(msg.sender);
        if (m.unlockAt == 0 || block.timestamp < m.unlockAt) revert StakeLocked(m.unlockAt);
        if (m.openTasks != 0) revert OpenRounds(msg.sender, m.openTasks);
        amount = m.stake;
        delete _miners[msg.sender];
        delete _minerKeys[msg.sender];
        emit StakeWithdrawn(msg.sender, amount);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    /// @notice A miner's stake record.
    function miner(address account) external view returns (Miner memory) {
        return _miners[account];
    }

    /// @notice A miner's secure-aggregation public key.
    function minerKey(address account) external view returns (bytes memory) {
        return _minerKeys[account];
    }

    /// @notice Nonce the next `registerFor` signature of `account` must carry.
    function registrationNonce(address account) external view returns (uint256) {
        return _registrationNonces[account];
    }

    // ------------------------------------------------------------------ internals

    function _register(address account, bytes calldata secaggKey) internal {
        Miner storage m = _miners[account];
        if (m.registered) revert AlreadyRegistered(account);
        if (!_isCompressedKey(secaggKey)) revert InvalidKey();
        if (msg.value < minStake || msg.value == 0 || msg.value > type(uint128).max) revert InsufficientStake(account);
        uint32 index = ++minerCount;
        m.registered = true;
        m.stake = uint128(msg.value);
        m.unlockAt = 0;
        m.index = index;
        m.openTasks = 0;
        _minerAt[index] = account;
        _registrationNonces[account] += 1;
        _minerKeys[account] = secaggKey;
        emit MinerRegistered(account, index, msg.value, secaggKey);
    }

    function _release(address account, uint256[] calldata taskIds) internal {
        uint256 len = taskIds.length;
        if (len == 0) return;
        Miner storage m = _miners[account];
        uint16 open = m.openTasks;
        for (uint256 i; i < len; ++i) {
            uint256 taskId = taskIds[i];
            uint256 w = _minerRounds[taskId][account];
            if ((w >> FLAGS_SHIFT) & OPEN == 0) continue;
            RoundState storage rs = _rounds[taskId];
            if (uint32(w) == rs.attempt && rs.phase != Phase.Idle) continue; // still in progress
            _minerRounds[taskId][account] = w & ~(uint256(OPEN) << FLAGS_SHIFT);
            if (open != 0) open -= 1;
            emit ParticipationReleased(taskId, account);
        }
        m.openTasks = open;
    }

    function _slash(address account, uint256 taskId, uint32 round, uint16 bps) internal {
        Miner storage m = _miners[account];
        uint256 amount = (uint256(m.stake) * bps) / BPS;
        if (amount == 0) return;
        m.stake -= uint128(amount);
        _credit(treasury, amount);
        emit Slashed(account, taskId, round, amount);
    }
}
