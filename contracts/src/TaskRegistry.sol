// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ModelMineBase} from "./ModelMineBase.sol";

/// @title TaskRegistry — task publishing with escrowed reward pool, hidden target, cancel and refund
/// @notice The pool is split evenly over `rounds`. A round's share becomes owed the moment the round is
///         finalized; when a task closes (completed, cancelled or expired) only the share of rounds never
///         finalized (plus rounding dust) is credited back to the publisher.
abstract contract TaskRegistry is ModelMineBase {
    /// @notice Publish a task; `msg.value` is the reward pool held in escrow.
    /// @return taskId the new task's id (1-based)
    function publishTask(TaskParams calldata p) external payable whenNotPaused returns (uint256 taskId) {
        if (p.aggregator == address(0)) revert ZeroAddress();
        if (p.rounds == 0) revert InvalidParams("rounds");
        if (msg.value < p.rounds || msg.value > type(uint128).max) revert InvalidParams("pool");
        if (p.deadline <= block.timestamp) revert InvalidParams("deadline");
        if (p.roundWindow == 0) revert InvalidParams("roundWindow");
        if (uint256(p.aggregatorShareBps) + feeBps > BPS) revert InvalidParams("aggregatorShareBps");
        if (p.quorumBps == 0 || p.quorumBps > BPS) revert InvalidParams("quorumBps");
        if (p.quantBits < 2 || p.quantBits > 16) revert InvalidParams("quantBits");
        if (p.modelHash == bytes32(0) || p.targetCommitment == bytes32(0)) revert InvalidParams("hash");
        if (!_isCompressedKey(p.publisherKey) || !_isCompressedKey(p.aggregatorKey)) revert InvalidKey();

        taskId = ++taskCount;
        Task storage t = _tasks[taskId];
        t.publisher = msg.sender;
        t.deadline = p.deadline;
        t.rounds = p.rounds;
        t.aggregator = p.aggregator;
        t.feeBps = feeBps;
        t.aggregatorShareBps = p.aggregatorShareBps;
        t.quorumBps = p.quorumBps;
        t.quantBits = p.quantBits;
        t.status = TaskStatus.Active;
        t.roundWindow = p.roundWindow;
        t.pool = uint128(msg.value);
        t.metadataHash = p.metadataHash;
        t.modelHash = p.modelHash;
        t.datasetType = p.datasetType;
        t.targetCommitment = p.targetCommitment;
        _publisherKeys[taskId] = p.publisherKey;
        _aggregatorKeys[taskId] = p.aggregatorKey;

        RoundState storage rs = _rounds[taskId];
        rs.round = 1;
        rs.epoch = 1;
        rs.participantsHash = bytes32(uint256(1));
        emit TaskPublished(
            taskId, msg.sender, p.aggregator, msg.value, p.rounds, p.deadline, p.modelHash, p.metadataHash, p.datasetType
        );
    }

    /// @notice Cancel a task. Finalized rounds stay owed (a round in its reveal phase is still settled);
    ///         a round still in voting is abandoned; the rest of the escrow is credited to the publisher.
    function cancelTask(uint256 taskId) external {
        Task storage t = _activeTask(taskId);
        if (msg.sender != t.publisher) revert NotPublisher(msg.sender);
        _close(taskId, t, TaskStatus.Cancelled);
    }

    /// @notice Close a task whose deadline passed (anyone may call); refunds rounds never finalized.
    ///         A round still in voting must be finalized or rejected first.
    function closeExpired(uint256 taskId) external {
        Task storage t = _activeTask(taskId);
        if (block.timestamp <= t.deadline) revert DeadlineNotPassed();
        Phase phase = _rounds[taskId].phase;
        if (phase == Phase.Voting) revert WrongPhase(Phase.Revealing, phase);
        _close(taskId, t, TaskStatus.Completed);
    }

    /// @notice Reveal the hidden target accuracy: keccak256(abi.encode(uint256 targetBps, bytes32 nonce))
    ///         must equal the commitment made at publish. If a finalized round already reached the target,
    ///         the task completes now (an attempt still in voting is abandoned).
    function revealTarget(uint256 taskId, uint256 targetBps, bytes32 nonce) external {
        Task storage t = _task(taskId);
        if (msg.sender != t.publisher) revert NotPublisher(msg.sender);
        if (t.targetRevealed) revert TargetAlreadyRevealed();
        if (targetBps > BPS || keccak256(abi.encode(targetBps, nonce)) != t.targetCommitment) {
            revert BadTargetOpening();
        }
        t.targetRevealed = true;
        t.targetBps = uint16(targetBps);
        emit TargetRevealed(taskId, uint16(targetBps));
        if (t.status == TaskStatus.Active && t.finalizedRounds > 0 && t.bestAccuracyBps >= targetBps) {
            _close(taskId, t, TaskStatus.Completed);
        }
    }

    // ------------------------------------------------------------------ views

    /// @notice The stored task.
    function getTask(uint256 taskId) external view returns (Task memory) {
        return _task(taskId);
    }

    /// @notice The task's NDD-FE public keys (publisher, aggregator).
    function taskKeys(uint256 taskId) external view returns (bytes memory publisherKey, bytes memory aggregatorKey) {
        _task(taskId);
        return (_publisherKeys[taskId], _aggregatorKeys[taskId]);
    }

    /// @notice The task's current round attempt.
    function getRound(uint256 taskId) external view returns (RoundState memory) {
        _task(taskId);
        return _rounds[taskId];
    }

    /// @notice A miner's state in a task's current epoch (flags: 1 committed, 4 revealed, 8 fault).
    function minerRound(uint256 taskId, address account) external view returns (MinerRound memory r) {
        uint256 w = _minerRounds[taskId][account];
        r.epoch = uint32(w);
        r.round = uint32(w >> ROUND_SHIFT);
        r.flags = uint8(w >> FLAGS_SHIFT);
        r.commitTag = uint64((w >> TAG_SHIFT) & TAG_MASK);
        r.score = uint112((w >> SCORE_SHIFT) & SCORE_MASK);
        r.pending = uint72((w >> PENDING_SHIFT) & PENDING_MASK);
    }

    // ------------------------------------------------------------------ internals

    function _task(uint256 taskId) internal view returns (Task storage t) {
        t = _tasks[taskId];
        if (t.status == TaskStatus.None) revert TaskNotFound(taskId);
    }

    function _activeTask(uint256 taskId) internal view returns (Task storage t) {
        t = _task(taskId);
        if (t.status != TaskStatus.Active) revert TaskNotActive(taskId);
    }

    /// @dev Credit the publisher with the escrow of rounds never finalized and close the task.
    function _close(uint256 taskId, Task storage t, TaskStatus status) internal {
        uint256 refund = uint256(t.pool) - (uint256(t.pool) / t.rounds) * t.finalizedRounds;
        t.status = status;
        _credit(t.publisher, refund);
        if (status == TaskStatus.Cancelled) emit TaskCancelled(taskId, refund);
        else emit TaskCompleted(taskId, t.finalizedRounds, refund);
    }
}
