// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IModelMine — types, errors and events shared by the ModelMine contracts (rules v2)
/// @notice Every state change emits one of the events below; every failure is a custom error so that
///         clients can decode reverts by name.
interface IModelMine {
    /// @notice Life cycle of a task. Cancelled/Completed tasks open no new round; a round already in
    ///         progress still runs to its end by its rules.
    enum TaskStatus {
        None,
        Active,
        Completed,
        Cancelled
    }

    /// @notice Phase of the task's current round attempt.
    /// Idle: waiting for the aggregator's `openRound`.
    /// Commit: selected miners commit until the commit deadline (or until all selected committed);
    ///         then the aggregator proposes the candidate (by commitDeadline + roundWindow, else `expire`).
    /// Voting: participants vote until all voted or the vote window ends; `finalize` decides.
    /// Revealing: the round is finalized (its reward is owed); participants reveal until the window ends;
    ///         `settle` pays.
    enum Phase {
        Idle,
        Commit,
        Voting,
        Revealing
    }

    /// @notice What a publisher supplies to `publishTask` (the reward pool is `msg.value`). Every
    ///         reward-relevant and crypto setting is fixed here for the whole task.
    struct TaskParams {
        bytes32 metadataHash; // keccak256 of the task metadata document
        bytes32 modelHash; // keccak256 of the initial model's safetensors bytes
        bytes32 datasetType; // e.g. bytes32("mnist")
        bytes32 targetCommitment; // keccak256(abi.encode(uint256 targetBps, bytes32 nonce))
        bytes publisherKey; // secure-aggregation public key of the publisher (33-byte compressed secp256k1)
        bytes aggregatorKey; // secure-aggregation public key of the aggregator (33 bytes)
        address aggregator; // the only address that may open rounds and propose candidates
        uint32 rounds; // number of rounds the pool pays for (1..MAX_ROUNDS)
        uint64 deadline; // unix time after which no round may be opened (at most MAX_TASK_DURATION ahead)
        uint32 commitWindow; // seconds of the commit window after openRound
        uint32 roundWindow; // seconds for proposing, for the vote window and for the reveal window
        uint16 aggregatorShareBps; // aggregator's share of each round's reward (<= MAX_AGGREGATOR_SHARE_BPS)
        uint16 voterShareBps; // share of the miners' pool paid equally to participants that voted
        uint16 quorumBps; // share of participants whose accept votes finalize a round (5000..10000)
        uint8 quantBits; // quantization bits b (2..16)
        uint32 k; // support size cap: a round's support has at most k coordinates; score <= k*(2^(b-1)-1)^2
        uint64 clipMicros; // quantization clip in millionths (1..1e12)
        uint8 secaggBackend; // 0 none (plaintext), 1 masked, 2 nddfe, 3 secaggplus
        uint8 supportMode; // 0 shared support, 1 local (per-miner) support
        uint16 threshold; // minimum participants for a candidate (secure-aggregation threshold, >= 2)
    }

    /// @notice Stored task. feeBps, slashBps and minStake are the network's values at publish time.
    struct Task {
        address publisher;
        uint64 deadline;
        uint32 rounds;
        address aggregator;
        uint16 feeBps;
        uint16 aggregatorShareBps;
        uint16 voterShareBps;
        uint16 quorumBps;
        uint16 slashBps;
        uint8 quantBits;
        TaskStatus status;
        uint32 commitWindow;
        uint32 roundWindow;
        uint32 startedRounds; // rounds opened at least once (their escrow is no longer refundable by cancel)
        uint32 finalizedRounds;
        uint16 targetBps;
        bool targetRevealed;
        uint16 bestAccuracyBps;
        uint128 pool;
        uint128 released; // escrow already credited (round payouts and refunds)
        uint32 k;
        uint64 clipMicros;
        uint8 secaggBackend;
        uint8 supportMode;
        uint16 threshold;
        uint128 minStake;
        bytes32 metadataHash;
        bytes32 modelHash; // last finalized global model (initial model before round 1)
        bytes32 datasetType;
        bytes32 targetCommitment;
    }

    /// @notice State of a task's current round attempt (reused across attempts).
    struct RoundState {
        uint32 round; // 1-based round number
        uint32 attempt; // attempt counter, unique per task (1, 2, ...): every openRound uses the next one,
        //                 so a rejected or expired round is retried under a new attempt
        Phase phase;
        uint16 selected; // number of selected miners
        uint16 participants; // selected miners that committed in the window
        uint16 votes;
        uint16 accepts;
        uint16 reveals;
        uint16 faults;
        uint40 commitDeadline; // end of the commit window
        uint40 deadline; // end of the propose, vote or reveal window (per phase)
        uint16 accuracyBps; // median of the voters' accuracies (set at finalize)
        bytes32 modelHash; // candidate model hash
        bytes32 supportHash; // hash of the shared support S_t, fixed by openRound
        bytes32 participantsHash; // keccak chain over (miner, commitment) in commit order, seeded with attempt
    }

    /// @notice Per (task, miner) state as returned by `minerRound` (stored packed in one word).
    struct MinerRound {
        uint32 attempt; // attempt the flags below belong to
        uint8 flags; // COMMITTED=1 | REVEALED=4 | FAULT=8 | OPEN=16 (counted in the miner's openTasks)
        uint64 score; // revealed score
        uint96 pending; // rewards accrued in this task, not yet claimed
    }

    /// @notice A registered miner. `openTasks` counts tasks in which it committed and has not released
    ///         the participation; stake cannot be withdrawn while it is nonzero.
    struct Miner {
        uint128 stake;
        uint64 unlockAt; // 0 while bonded; time the stake can be withdrawn once unbonding
        bool registered;
        uint32 index; // 1-based registration index (selection bitmaps refer to it)
        uint16 openTasks;
    }

    /// @notice One entry of the round's participant list (in commit order).
    struct Participant {
        address miner;
        bytes32 commitment;
    }

    /// @notice A relayed Submission; taskId, round, attempt and supportHash are the round's.
    ///         (r, vs) is the EIP-2098 compact form of the miner's EIP-712 signature.
    struct SignedSubmission {
        bytes32 ciphertextHash;
        bytes32 commitment;
        bytes32 r;
        bytes32 vs;
    }

    /// @notice A relayed Vote; taskId, round, attempt and modelHash are the batch's.
    struct SignedVote {
        uint16 index; // position of the voter in the participant list passed with the batch
        bool accept;
        uint16 accuracyBps;
        bytes32 r;
        bytes32 vs;
    }

    /// @notice A relayed Reveal; `index` points into the participant list passed with the batch.
    struct SignedReveal {
        uint16 index;
        uint256 score;
        bytes32 nonce;
        bytes32 r;
        bytes32 vs;
    }

    // ------------------------------------------------------------------ errors
    error ZeroAddress();
    error InvalidParams(bytes32 what); // what: the offending parameter's name, right-padded
    error InvalidKey();
    error TaskNotFound(uint256 taskId);
    error TaskNotActive(uint256 taskId);
    error NotPublisher(address caller);
    error NotAggregator(address caller);
    error DeadlinePassed();
    error DeadlineNotPassed();
    error WrongRound(uint256 expectedRound, uint256 expectedAttempt, uint256 round, uint256 attempt);
    error WrongPhase(Phase expected, Phase actual);
    error WindowClosed();
    error WindowOpen();
    error NotRegistered(address miner);
    error AlreadyRegistered(address miner);
    error InsufficientStake(address miner);
    error Unbonding(address miner);
    error StakeLocked(uint64 unlockAt);
    error OpenRounds(address miner, uint16 openTasks);
    error DuplicateSelection(uint32 index);
    error NotParticipant(address miner);
    error AlreadyVoted(address miner);
    error AlreadyRevealed(address miner);
    error ModelMismatch();
    error AccuracyOutOfRange(uint256 accuracyBps);
    error ParticipantsMismatch();
    error TooFewParticipants(uint16 participants, uint16 threshold);
    error TooManyParticipants();
    error BadTargetOpening();
    error TargetAlreadyRevealed();
    error NothingToClaim();
    error TransferFailed();
    error SignatureExpired();
    error BadSignature();

    // ------------------------------------------------------------------ events
    event TaskPublished(
        uint256 indexed taskId,
        address indexed publisher,
        address indexed aggregator,
        uint256 pool,
        uint32 rounds,
        uint64 deadline,
        bytes32 modelHash,
        bytes32 metadataHash,
        bytes32 datasetType
    );
    /// @notice The task's fixed round settings (emitted with TaskPublished).
    event TaskSettings(
        uint256 indexed taskId,
        uint32 k,
        uint8 quantBits,
        uint64 clipMicros,
        uint8 secaggBackend,
        uint8 supportMode,
        uint16 threshold,
        uint16 feeBps,
        uint16 slashBps,
        uint16 voterShareBps
    );
    event TaskCancelled(uint256 indexed taskId, uint256 refund);
    event TaskCompleted(uint256 indexed taskId, uint32 finalizedRounds);
    event Refunded(uint256 indexed taskId, uint256 amount);
    event TargetRevealed(uint256 indexed taskId, uint16 targetBps);
    event MinerRegistered(address indexed miner, uint32 index, uint256 stake, bytes publicKey);
    event StakeAdded(address indexed miner, uint256 amount, uint256 stake);
    event UnstakeRequested(address indexed miner, uint64 unlockAt);
    event StakeWithdrawn(address indexed miner, uint256 amount);
    event ParticipationReleased(uint256 indexed taskId, address indexed miner);
    event RoundOpened(
        uint256 indexed taskId,
        uint32 indexed round,
        uint32 attempt,
        bytes32 supportHash,
        uint40 commitDeadline,
        uint32[] selected
    );
    event Committed(
        uint256 indexed taskId, address indexed miner, uint32 round, uint32 attempt, bytes32 ciphertextHash, bytes32 commitment
    );
    event RoundProposed(uint256 indexed taskId, uint32 indexed round, uint32 attempt, bytes32 modelHash, uint16 participants);
    event RoundExpired(uint256 indexed taskId, uint32 indexed round, uint32 attempt, Phase phase);
    event Voted(uint256 indexed taskId, address indexed miner, bool accept, uint16 accuracyBps);
    event RoundFinalized(uint256 indexed taskId, uint32 indexed round, uint32 attempt, bytes32 modelHash, uint16 accuracyBps);
    event RoundRejected(uint256 indexed taskId, uint32 indexed round, uint32 attempt, uint16 accepts, uint16 votes);
    event Revealed(uint256 indexed taskId, address indexed miner, uint256 score);
    event RevealInvalid(uint256 indexed taskId, address indexed miner, uint256 score);
    event Slashed(address indexed miner, uint256 indexed taskId, uint32 round, uint256 amount);
    /// @dev fee, aggregatorShare and returned are credited to the treasury, the aggregator and the
    ///      publisher; votersPaid and minersPaid are accrued to the participants' pending rewards.
    event RoundSettled(
        uint256 indexed taskId,
        uint32 indexed round,
        uint256 minersPaid,
        uint256 votersPaid,
        uint256 fee,
        uint256 aggregatorShare,
        uint256 returned,
        uint256 weightCap
    );
    event Credited(address indexed account, uint256 amount);
    event Claimed(address indexed account, uint256 amount);
    event TreasuryChanged(address indexed treasury);
    event NetworkParamsChanged(uint16 feeBps, uint128 minStake, uint16 slashBps, uint32 unbondingPeriod);
}
