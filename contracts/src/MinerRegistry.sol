// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ModelMineBase} from "./ModelMineBase.sol";

/// @title MinerRegistry — miner registration with stake and NDD-FE public key
/// @notice A miner bonds at least `minStake` wei. Stake can be slashed for missing or invalid reveals;
///         it is withdrawn in two steps (`requestUnstake`, then `withdrawStake` after `unbondingPeriod`),
///         and a miner that is unbonding can no longer submit.
abstract contract MinerRegistry is ModelMineBase {
    /// @notice Register the caller with `msg.value` as stake and its NDD-FE public key (33 bytes).
    function register(bytes calldata publicKey) external payable whenNotPaused {
        Miner storage m = _miners[msg.sender];
        if (m.registered) revert AlreadyRegistered(msg.sender);
        if (!_isCompressedKey(publicKey)) revert InvalidKey();
        if (msg.value < minStake || msg.value == 0) revert InsufficientStake(msg.sender);
        m.registered = true;
        m.stake = uint128(msg.value);
        m.unlockAt = 0;
        _minerKeys[msg.sender] = publicKey;
        emit MinerRegistered(msg.sender, msg.value, publicKey);
    }

    /// @notice Add `msg.value` to the caller's stake (cancels nothing: an unbonding miner stays unbonding).
    function addStake() external payable whenNotPaused {
        Miner storage m = _miners[msg.sender];
        if (!m.registered) revert NotRegistered(msg.sender);
        if (msg.value == 0) revert InsufficientStake(msg.sender);
        m.stake += uint128(msg.value);
        emit StakeAdded(msg.sender, msg.value, m.stake);
    }

    /// @notice Start unbonding; the stake stays slashable until withdrawn.
    function requestUnstake() external {
        Miner storage m = _miners[msg.sender];
        if (!m.registered) revert NotRegistered(msg.sender);
        if (m.unlockAt != 0) revert Unbonding(msg.sender);
        uint64 unlockAt = uint64(block.timestamp) + unbondingPeriod;
        m.unlockAt = unlockAt;
        emit UnstakeRequested(msg.sender, unlockAt);
    }

    /// @notice Withdraw the whole remaining stake after unbonding and deregister.
    function withdrawStake() external nonReentrant returns (uint256 amount) {
        Miner storage m = _miners[msg.sender];
        if (!m.registered) revert NotRegistered(msg.sender);
        if (m.unlockAt == 0 || block.timestamp < m.unlockAt) revert StakeLocked(m.unlockAt);
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

    /// @notice A miner's NDD-FE public key.
    function minerKey(address account) external view returns (bytes memory) {
        return _minerKeys[account];
    }

    function _slash(address account, uint256 taskId, uint32 round) internal {
        Miner storage m = _miners[account];
        uint256 amount = (uint256(m.stake) * slashBps) / BPS;
        if (amount == 0) return;
        m.stake -= uint128(amount);
        _credit(treasury, amount);
        emit Slashed(account, taskId, round, amount);
    }
}
