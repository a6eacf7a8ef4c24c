// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IModelMine — types, errors and events shared by the ModelMine contracts
/// @notice Every state change of the protocol emits one of the events below; every failure is a
///         custom error so that clients can decode reverts by name.
interface IModelMine {
    /// @notice Life cycle of a task.
    enum TaskStatus {
        None,
        Active,
        Completed,
        Cancelled
    }

    /// @notice Phase of the task's current round attempt (epoch).
    /// Commit: submissions (commitments) accepted until the aggregator proposes the candidate block.
    /// Voting: participants vote on the candidate until all voted or the vote window ends.
    /// Revealing: the round is finalized (its reward is owed); participants reveal their scores.
    enum Phase {
        Commit,
        Voting,
        Revealing
    }

    /// @notice What a publisher supplies to `publishTask` (the reward pool is `msg.value`).
    struct TaskParams {
        bytes32 metadataHash; // keccak256 of the task metadata document
        bytes32 modelHash; // keccak256 of the initial model's safetensors bytes
        bytes32 datasetType; // e.g. bytes32("mnist")
        bytes32 targetCommitment; // keccak256(abi.encode(uint256 targetBps, bytes32 nonce))
        bytes publisherKey; // NDD-FE public key, 33-byte compressed secp256k1
        bytes aggregatorKey; // NDD-FE public key, 33-byte compressed secp256k1
        address aggregator; // the only address that may propose candidate blocks
        uint32 rounds; // number of rounds the pool pays for
        uint64 deadline; // unix time after which no round may be proposed
        uint32 roundWindow; // seconds for the vote window and for the reveal window
        uint16 aggregatorShareBps; // aggregator's share of each round's reward
        uint16 quorumBps; // share of participants whose accept votes finalize a round
        uint8 quantBits; // quantization bits b (2..16): a score is at most k * (2^(b-1)-1)^2
    }

    /// @notice Stored task (packed: slots 0-2 hold all the scalar fields).
    struct Task {
        address publisher;
        uint64 deadline;
        uint32 rounds;
        address aggregator;
        uint16 feeBps;
        uint16 aggregatorShareBps;
        uint16 quorumBps;
        uint8 quantBits;
        TaskStatus status;
        uint32 roundWindow;
        uint128 pool;
        uint32 finalizedRounds;
        uint16 targetBps;
        bool targetRevealed;
        uint16 bestAccuracyBps;
        bytes32 metadataHash;
        bytes32 modelHash; // last finalized global model (initial model before round 1)
        bytes32 datasetType;
        bytes32 targetCommitment;
    }

    /// @notice State of a task's current round attempt. Reused across rounds so that steady-state
    ///         writes are nonzero-to-nonzero.
    struct RoundState {
        uint32 round; // 1-based round number
        uint32 epoch; // attempt counter, unique per task; a rejected round is retried in a new epoch
        Phase phase;
        uint32 k; // support size of the candidate
        uint16 participants;
        uint16 votes;
        uint16 accepts;
        uint16 reveals;
        uint16 faults;
        uint40 deadline; // end of the current vote or reveal window
        uint16 accuracyBps; // median of the voters' accuracies (set at finalize)
        bytes32 modelHash; // candidate model hash
        bytes32 supportHash; // hash of the shared support S_t (set by the epoch's first submission)
        bytes32 participantsHash; // keccak chain over (miner, commitment) in submission order
        uint128 totalScore; // sum of verified scores
        uint32 scoreEpoch; // epoch that totalScore belongs to
    }

    /// @notice Per (task, miner) state as returned by `minerRound` (stored packed in one word, reused across rounds).
    struct MinerRound {
        uint32 epoch; // epoch the flags below belong to
        uint32 round; // round of that epoch
        uint8 flags; // COMMITTED=1 | REVEALED=4 | FAULT=8 (votes are kept in a per-epoch bitmap)
        uint64 commitTag; // low 48 bits of the last commitment (replay guard across retries)
        uint112 score; // verified score (after reveal; at most 64 bits are used)
        uint72 pending; // rewards accrued in this task, not yet claimed
    }

    /// @notice A registered miner.
    struct Miner {
        uint128 stake;
        uint64 unlockAt; // 0 while bonded; time the stake can be withdrawn once unbonding
        bool registered;
    }

    /// @notice One entry of the round's participant list (in submission order).
    struct Participant {
        address miner;
        bytes32 commitment;
    }

    /// @notice A relayed Submission; taskId, round and supportHash are the batch's.
    ///         (r, vs) is the EIP-2098 compact form of the miner's EIP-712 signature.
    struct SignedSubmission {
        bytes32 ciphertextHash;
        bytes32 commitment;
        bytes32 r;
        bytes32 vs;
    }

    /// @notice A relayed Vote; taskId, round and modelHash are the batch's.
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
    error WrongRound(uint256 expected, uint256 got);
    error WrongPhase(Phase expected, Phase actual);
    error WindowClosed();
    error WindowOpen();
    error NotRegistered(address miner);
    error AlreadyRegistered(address miner);
    error InsufficientStake(address miner);
    error Unbonding(address miner);
    error StakeLocked(uint64 unlockAt);
    error AlreadyCommitted(address miner);
    error SignatureReplayed(address miner);
    error SupportMismatch();
    error NotParticipant(address miner);
    error AlreadyVoted(address miner);
    error AlreadyRevealed(address miner);
    error ModelMismatch();
    error AccuracyOutOfRange(uint256 accuracyBps);
    error RevealMismatch(address miner);
    error ScoreTooLarge(uint256 score, uint256 maxScore);
    error ParticipantsMismatch();
    error NoParticipants();
    error TooManyParticipants();
    error BadTargetOpening();
    error TargetAlreadyRevealed();
    error NothingToClaim();
    error TransferFailed();

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
    event TaskCancelled(uint256 indexed taskId, uint256 refund);
    event TaskCompleted(uint256 indexed taskId, uint32 finalizedRounds, uint256 refund);
    event TargetRevealed(uint256 indexed taskId, uint16 targetBps);
    event MinerRegistered(address indexed miner, uint256 stake, bytes publicKey);
    event StakeAdded(address indexed miner, uint256 amount, uint256 stake);
    event UnstakeRequested(address indexed miner, uint64 unlockAt);
    event StakeWithdrawn(address indexed miner, uint256 amount);
    event Committed(
        uint256 indexed taskId,
        address indexed miner,
        uint32 round,
        uint32 epoch,
        bytes32 ciphertextHash,
        bytes32 commitment
    );
    event RoundProposed(
        uint256 indexed taskId,
        uint32 indexed round,
        uint32 epoch,
        bytes32 modelHash,
        bytes32 supportHash,
        uint32 k,
        uint16 participants
    );
    event Voted(uint256 indexed taskId, address indexed miner, uint32 round, bool accept, uint16 accuracyBps);
    event RoundFinalized(uint256 indexed taskId, uint32 indexed round, uint32 epoch, bytes32 modelHash, uint16 accuracyBps);
    event RoundRejected(uint256 indexed taskId, uint32 indexed round, uint32 epoch, uint16 accepts, uint16 votes);
    event Revealed(uint256 indexed taskId, address indexed miner, uint32 round, uint256 score);
    event RevealInvalid(uint256 indexed taskId, address indexed miner, uint32 round, uint256 score);
    event Slashed(address indexed miner, uint256 indexed taskId, uint32 round, uint256 amount);
    /// @dev fee, aggregatorShare and returned are credited to the treasury, the aggregator and the
    ///      publisher (no separate Credited events); minersPaid is accrued to the revealers' pending rewards.
    event RoundSettled(
        uint256 indexed taskId, uint32 indexed round, uint256 minersPaid, uint256 fee, uint256 aggregatorShare, uint256 returned
    );
    event Credited(address indexed account, uint256 amount);
    event Claimed(address indexed account, uint256 amount);
    event TreasuryChanged(address treasury);
    event NetworkParamsChanged(uint16 feeBps, uint128 minStake, uint16 slashBps, uint32 unbondingPeriod);
}
