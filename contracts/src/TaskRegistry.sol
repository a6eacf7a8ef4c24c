// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ModelMineBase} from "./ModelMineBase.sol";

/// @title TaskRegistry — task publishing with escrowed reward pool, fixed settings, hidden target,
///        cancel and refund
/// @notice The pool is split evenly over `rounds`. Once a round has been opened its share is no longer
///         refundable by the publisher: it is paid by the round's rules (settled) or, when the round
///         ends without a finalized candidate in a task that opens no more rounds, returned. `released`
///         counts every wei that left the escrow, so `pool - released` is what the task still holds.
abstract contract TaskRegistry is ModelMineBase {
    /// @notice Publish a task; `msg.value` is the reward pool held in escrow. Every parameter is
    ///         bounded; the network's fee, slash share and minimum stake are copied into the task.
    /// @return taskId the new task's id (1-based)
    function publishTask(TaskParams calldata p) external payable whenNotPaused returns (uint256 taskId) {
        _checkParams(p);
        taskId = ++taskCount;
        Task storage t = _tasks[taskId];
        t.publisher = msg.sender;
        t.deadline = p.deadline;
        t.rounds = p.rounds;
        t.aggregator = p.aggregator;
        t.feeBps = feeBps;
        t.aggregatorShareBps = p.aggregatorShareBps;
        t.voterShareBps = p.voterShareBps;
        t.quorumBps = p.quorumBps;
        t.slashBps = slashBps;
        t.quantBits = p.quantBits;
        t.status = TaskStatus.Active;
        t.commitWindow = p.commitWindow;
        t.roundWindow = p.roundWindow;
        t.pool = uint128(msg.value);
        t.k = p.k;
        t.clipMicros = p.clipMicros;
        t.secaggBackend = p.secaggBackend;
        t.supportMode = p.supportMode;
        t.threshold = p.threshold;
        t.minStake = minStake;
        t.metadataHash = p.metadataHash;
        t.modelHash = p.modelHash;
        t.datasetType = p.datasetType;
        t.targetCommitment = p.targetCommitment;
        _publisherKeys[taskId] = p.publisherKey;
        _aggregatorKeys[taskId] = p.aggregatorKey;

        RoundState storage rs = _rounds[taskId];
        rs.round = 1;
        emit TaskPublished(
            taskId, msg.sender, p.aggregator, msg.value, p.rounds, p.deadline, p.modelHash, p.metadataHash, p.datasetType
        );
        emit TaskSettings(
            taskId, p.k, p.quantBits, p.clipMicros, p.secaggBackend, p.supportMode, p.threshold, feeBps, slashBps, p.voterShareBps
        );
    }

    /// @notice Cancel a task (publisher only): refunds the share of rounds never opened. A round already
    ///         opened runs to its end by its rules (a finalized round is paid); no new round opens.
    function cancelTask(uint256 taskId) external {
        Task storage t = _activeTask(taskId);
        if (msg.sender != t.publisher) revert NotPublisher(msg.sender);
        t.status = TaskStatus.Cancelled;
        uint256 refund = _refundUnstarted(taskId, t);
        emit TaskCancelled(taskId, refund);
        _closeIfIdle(taskId, t);
    }

    /// @notice Complete a task whose deadline passed (anyone): no new round opens; escrow not owed to a
    ///         round in progress is refunded (the rest when that round ends).
    function closeExpired(uint256 taskId) external {
        Task storage t = _activeTask(taskId);
        if (block.timestamp <= t.deadline) revert DeadlineNotPassed();
        _complete(taskId, t);
    }

    /// @notice Reveal the hidden target accuracy: keccak256(abi.encode(uint256 targetBps, bytes32 nonce))
    ///         must equal the commitment made at publish. If a finalized round already reached the target,
    ///         the task completes (a round in progress still runs to its end).
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
            _complete(taskId, t);
        }
    }

    // ------------------------------------------------------------------ views

    /// @notice The stored task.
    function getTask(uint256 taskId) external view returns (Task memory) {
        return _task(taskId);
    }

    /// @notice The task's secure-aggregation public keys (publisher, aggregator).
    function taskKeys(uint256 taskId) external view returns (bytes memory publisherKey, bytes memory aggregatorKey) {
        _task(taskId);
        return (_publisherKeys[taskId], _aggregatorKeys[taskId]);
    }

    /// @notice The task's current round attempt.
    function getRound(uint256 taskId) external view returns (RoundState memory) {
        _task(taskId);
        return _rounds[taskId];
    }

    /// @notice A miner's state in a task (flags: 1 committed, 4 revealed, 8 fault, 16 open).
    function minerRound(uint256 taskId, address account) external view returns (MinerRound memory r) {
        uint256 w = _minerRounds[taskId][account];
        r.attempt = uint32(w);
        r.flags = uint8(w >> FLAGS_SHIFT);
        r.score = uint64((w >> SCORE_SHIFT) & SCORE_MASK);
        r.pending = uint96((w >> PENDING_SHIFT) & PENDING_MASK);
    }

    // ------------------------------------------------------------------ internals

    function _checkParams(TaskParams calldata p) internal view {
        if (p.aggregator == address(0)) revert ZeroAddress();
        if (p.rounds == 0 || p.rounds > MAX_ROUNDS) revert InvalidParams("rounds");
        if (msg.value < p.rounds || msg.value > type(uint128).max) revert InvalidParams("pool");
        if (p.deadline <= block.timestamp || p.deadline > block.timestamp + MAX_TASK_DURATION) {
            revert InvalidParams("deadline");
        }
        if (p.commitWindow < MIN_WINDOW || p.commitWindow > MAX_WINDOW) revert InvalidParams("commitWindow");
        if (p.roundWindow < MIN_WINDOW || p.roundWindow > MAX_WINDOW) revert InvalidParams("roundWindow");
        if (p.aggregatorShareBps > MAX_AGGREGATOR_SHARE_BPS) revert InvalidParams("aggregatorShareBps");
        if (p.voterShareBps > MAX_VOTER_SHARE_BPS) revert InvalidParams("voterShareBps");
        if (p.quorumBps < MIN_QUORUM_BPS || p.quorumBps > BPS) revert InvalidParams("quorumBps");
        if (p.quantBits < 2 || p.quantBits > 16) revert InvalidParams("quantBits");
        if (p.k == 0) revert InvalidParams("k");
        if (p.clipMicros == 0 || p.clipMicros > MAX_CLIP_MICROS) revert InvalidParams("clipMicros");
        if (p.secaggBackend > MAX_SECAGG_BACKEND) revert InvalidParams("secaggBackend");
        if (p.supportMode > MAX_SUPPORT_MODE) revert InvalidParams("supportMode");
        if (p.threshold < 2 || p.threshold > MAX_PARTICIPANTS) revert InvalidParams("threshold");
        if (p.modelHash == bytes32(0) || p.targetCommitment == bytes32(0)) revert InvalidParams("hash");
        if (!_isCompressedKey(p.publisherKey) || !_isCompressedKey(p.aggregatorKey)) revert InvalidKey();
    }

    function _task(uint256 taskId) internal view returns (Task storage t) {
        t = _tasks[taskId];
        if (t.status == TaskStatus.None) revert TaskNotFound(taskId);
    }

    function _activeTask(uint256 taskId) internal view returns (Task storage t) {
        t = _task(taskId);
        if (t.status != TaskStatus.Active) revert TaskNotActive(taskId);
    }

    /// @dev Active -> Completed: refund rounds never opened now, the rest when the current round ends.
    function _complete(uint256 taskId, Task storage t) internal {
        t.status = TaskStatus.Completed;
        _refundUnstarted(taskId, t);
        emit TaskCompleted(taskId, t.finalizedRounds);
        _closeIfIdle(taskId, t);
    }

    /// @dev Credit the publisher the share of rounds never opened plus the rounding dust.
    function _refundUnstarted(uint256 taskId, Task storage t) internal returns (uint256 refund) {
        uint256 perRound = uint256(t.pool) / t.rounds;
        refund = perRound * (t.rounds - t.startedRounds) + (uint256(t.pool) - perRound * t.rounds);
        _refund(taskId, t, refund);
    }

    /// @dev In a task that opens no more rounds, once no round is in progress nothing in escrow is owed
    ///      to anyone but the publisher: return it.
    function _closeIfIdle(uint256 taskId, Task storage t) internal {
        if (t.status != TaskStatus.Active && _rounds[taskId].phase == Phase.Idle) {
            _refund(taskId, t, uint256(t.pool) - t.released);
        }
    }

    function _refund(uint256 taskId, Task storage t, uint256 amount) internal {
        if (amount == 0) return;
        t.released += uint128(amount);
        _credit(t.publisher, amount);
        emit Refunded(taskId, amount);
    }
}
