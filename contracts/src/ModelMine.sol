// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MinerRegistry} from "./MinerRegistry.sol";
import {ModelMineBase} from "./ModelMineBase.sol";
import {TaskRegistry} from "./TaskRegistry.sol";

/// @title ModelMine — rounds, voting, reveals and rewards of federated-learning tasks (rules v2)
/// @notice One round attempt goes Idle -> Commit -> Voting -> Revealing -> Idle (next round), and every
///         phase has a path that anyone can take once its window is over:
///         openRound (aggregator): the selected miners (by registration index) and the support hash;
///         Commit: each selected miner's signed Submission, in an idempotent `commitBatch` sent by the
///           aggregator, by anyone, or by the miner itself, until the commit deadline; whoever committed
///           is a participant, whatever comes next;
///         propose (aggregator): the candidate model hash, after the commit window (or once every
///           selected miner committed), by commitDeadline + roundWindow; otherwise anyone may `expire`
///           the attempt and the aggregator retries the round under the next attempt;
///         Voting: participants' signed votes (`voteRevealBatch`, sent by the relayer or the miner itself);
///           `finalize` (anyone) once all voted, the window
///           ended or rejection is certain: quorum accepts -> Revealing (the round's reward is owed),
///           otherwise the round is retried under the next attempt;
///         Revealing: participants' signed openings (`revealBatch`/`voteRevealBatch`, relayer or miner); `settle` (anyone) once all
///           revealed or the window ended: fee, aggregator share, voter share (equal, voters only) and the
///           rest by weight = min(score, 2 x median revealed score); missing or invalid reveals are slashed.
///         Every signed message and the commitment bind (taskId, round, attempt); attempts count up per
///         task (1, 2, ...), so (taskId, attempt) never repeats.
/// @dev EIP-712 domain ("ModelMine", "1", chainid, this). Signatures are EIP-2098 compact (r, vs).
contract ModelMine is MinerRegistry, TaskRegistry {
    bytes32 internal constant SUBMISSION_TYPEHASH = keccak256(
        "Submission(uint256 taskId,uint256 round,uint256 attempt,bytes32 supportHash,bytes32 ciphertextHash,bytes32 commitment)"
    );
    bytes32 internal constant VOTE_TYPEHASH = keccak256(
        "Vote(uint256 taskId,uint256 round,uint256 attempt,bytes32 modelHash,bool accept,uint256 accuracyBps)"
    );
    bytes32 internal constant REVEAL_TYPEHASH =
        keccak256("Reveal(uint256 taskId,uint256 round,uint256 attempt,uint256 score,bytes32 nonce)");

    /// @param owner_ admin (treasury, bounded network parameters, pause of new work)
    /// @param treasury_ receives network fees and slashed stake
    /// @param feeBps_ network fee per round reward, basis points (<= MAX_FEE_BPS)
    /// @param minStake_ minimum miner stake, wei
    /// @param slashBps_ share of stake slashed per missing or invalid reveal (<= MAX_SLASH_BPS)
    /// @param unbonding_ seconds between requestUnstake and withdrawStake (<= MAX_UNBONDING)
    constructor(address owner_, address treasury_, uint16 feeBps_, uint128 minStake_, uint16 slashBps_, uint32 unbonding_)
        ModelMineBase(owner_, treasury_, feeBps_, minStake_, slashBps_, unbonding_)
    {}

    // ================================================================== open

    /// @notice The aggregator opens round `round` under attempt `attempt` (the task's last attempt + 1)
    ///         with the selected miners
    ///         (registration indices, see `miner(...).index`) and the hash of the shared support.
    function openRound(uint256 taskId, uint256 round, uint256 attempt, bytes32 supportHash, uint32[] calldata selected)
        external
        whenNotPaused
    {
        Task storage t = _activeTask(taskId);
        if (msg.sender != t.aggregator) revert NotAggregator(msg.sender);
        if (block.timestamp > t.deadline) revert DeadlinePassed();
        RoundState storage rs = _rounds[taskId];
        if (rs.phase != Phase.Idle) revert WrongPhase(Phase.Idle, rs.phase);
        if (round != rs.round || attempt != uint256(rs.attempt) + 1) {
            revert WrongRound(rs.round, uint256(rs.attempt) + 1, round, attempt);
        }
        uint256 n = selected.length;
        if (n < t.threshold || n > MAX_PARTICIPANTS) revert InvalidParams("selected");
        if (supportHash == bytes32(0)) revert InvalidParams("supportHash");
        uint32 epoch = uint32(attempt);
        _storeSelection(taskId, epoch, selected);
        uint40 closesAt = uint40(block.timestamp + t.commitWindow);
        rs.attempt = epoch;
        rs.phase = Phase.Commit;
        rs.selected = uint16(n);
        rs.participants = 0;
        rs.votes = 0;
        rs.accepts = 0;
        rs.reveals = 0;
        rs.faults = 0;
        rs.commitDeadline = closesAt;
        rs.deadline = closesAt + t.roundWindow;
        rs.supportHash = supportHash;
        rs.participantsHash = bytes32(uint256(epoch));
        if (t.startedRounds < round) t.startedRounds = uint32(round);
        emit RoundOpened(taskId, uint32(round), epoch, supportHash, closesAt, selected);
    }

    // ================================================================== commit

    /// @notice Relay selected miners' signed submissions (the aggregator, anyone, or a miner sending its
    ///         own). Idempotent: an entry that cannot count (already committed in this attempt, signer not
    ///         registered, unbonding, under the minimum stake or not selected) is skipped, so neither a
    ///         copied batch nor one bad entry can make the aggregator's batch revert. A Committed event is
    ///         emitted for every entry that counted.
    function commitBatch(uint256 taskId, uint256 round, uint256 attempt, SignedSubmission[] calldata subs) external {
        RoundState storage rs = _commitPhase(taskId, round, attempt);
        CommitCtx memory c = _commitCtx(taskId, rs);
        bytes32 support = rs.supportHash;
        uint256 len = subs.length;
        for (uint256 i; i < len; ++i) {
            SignedSubmission calldata s = subs[i];
            bytes32 digest = _hashTypedDataV4(
                keccak256(abi.encode(SUBMISSION_TYPEHASH, taskId, round, attempt, support, s.ciphertextHash, s.commitment))
            );
            _commitOne(c, s.ciphertextHash, s.commitment, ECDSA.recover(digest, s.r, s.vs));
        }
        _commitStore(rs, c);
    }

    /// @notice The aggregator proposes the candidate: after the commit window (or once every selected
    ///         miner committed) and before commitDeadline + roundWindow; opens the vote window.
    function propose(uint256 taskId, uint256 round, uint256 attempt, bytes32 modelHash) external {
        Task storage t = _task(taskId);
        if (msg.sender != t.aggregator) revert NotAggregator(msg.sender);
        RoundState storage rs = _rounds[taskId];
        if (rs.phase != Phase.Commit) revert WrongPhase(Phase.Commit, rs.phase);
        _checkRound(rs, round, attempt);
        if (block.timestamp <= rs.commitDeadline && rs.participants < rs.selected) revert WindowOpen();
        if (block.timestamp > rs.deadline) revert WindowClosed();
        if (modelHash == bytes32(0)) revert InvalidParams("modelHash");
        uint16 n = rs.participants;
        if (n < t.threshold) revert TooFewParticipants(n, t.threshold);
        rs.phase = Phase.Voting;
        rs.modelHash = modelHash;
        rs.deadline = uint40(block.timestamp + t.roundWindow);
        emit RoundProposed(taskId, uint32(round), uint32(attempt), modelHash, n);
    }

    /// @notice Timeout of the commit phase (anyone): when no candidate was proposed in time (or too few
    ///         miners committed), the attempt ends and the round is retried as attempt + 1. Nobody is
    ///         slashed and nothing is paid. (Voting times out through `finalize`, Revealing through `settle`.)
    function expire(uint256 taskId) external {
        Task storage t = _task(taskId);
        RoundState storage rs = _rounds[taskId];
        if (rs.phase != Phase.Commit) revert WrongPhase(Phase.Commit, rs.phase);
        bool tooFew = block.timestamp > rs.commitDeadline && rs.participants < t.threshold;
        if (block.timestamp <= rs.deadline && !tooFew) revert WindowOpen();
        emit RoundExpired(taskId, rs.round, rs.attempt, Phase.Commit);
        _retry(rs);
        _closeIfIdle(taskId, t);
    }

    // ================================================================== voting

    /// @notice Relay signed votes (finalizing once everyone voted) and, once they finalize the round,
    ///         signed reveals (settling when every participant revealed; `reveals` may be empty). When the
    ///         round is rejected the reveals are ignored.
    function voteRevealBatch(
        uint256 taskId,
        uint256 round,
        uint256 attempt,
        bytes32 modelHash,
        Participant[] calldata list,
        SignedVote[] calldata votes,
        SignedReveal[] calldata reveals
    ) external {
        (Task storage t, RoundState storage rs) = _votePhase(taskId, round, attempt, modelHash, list);
        _relayVotes(t, rs, taskId, modelHash, list, votes);
        if (rs.phase == Phase.Revealing) _relayReveals(t, rs, taskId, list, reveals);
    }

    /// @notice Decide the candidate (anyone): when all participants voted, the vote window ended, or
    ///         acceptance has become impossible. Linear in the number of voters (radix selection).
    function finalize(uint256 taskId) external {
        Task storage t = _task(taskId);
        RoundState storage rs = _rounds[taskId];
        if (rs.phase != Phase.Voting) revert WrongPhase(Phase.Voting, rs.phase);
        uint256 n = rs.participants;
        bool impossible = (n - (rs.votes - rs.accepts)) * BPS < uint256(t.quorumBps) * n;
        if (rs.votes < n && block.timestamp <= rs.deadline && !impossible) revert WindowOpen();
        _finalize(taskId, t, rs);
    }

    // ================================================================== reveals

    /// @notice Relay signed reveals. An opening above the task's maximum score is a provable fault
    ///         (slashed at settlement); one that does not open the commitment is skipped (RevealInvalid).
    function revealBatch(
        uint256 taskId,
        uint256 round,
        uint256 attempt,
        Participant[] calldata list,
        SignedReveal[] calldata reveals
    ) external {
        (Task storage t, RoundState storage rs) = _revealPhase(taskId, round, attempt, list);
        _relayReveals(t, rs, taskId, list, reveals);
    }

    /// @notice Settle a finalized round (anyone) once all revealed or after its reveal window.
    function settle(uint256 taskId, Participant[] calldata list) external {
        Task storage t = _task(taskId);
        RoundState storage rs = _rounds[taskId];
        if (rs.phase != Phase.Revealing) revert WrongPhase(Phase.Revealing, rs.phase);
        if (block.timestamp <= rs.deadline && rs.reveals + rs.faults < rs.participants) revert WindowOpen();
        _checkList(rs, list);
        _settle(taskId, t, rs, list);
    }

    // ================================================================== views

    /// @notice Largest score a participant may reveal: k * (2^(bits-1) - 1)^2 (fixed per task).
    function maxScore(uint256 taskId) external view returns (uint256) {
        return _maxScore(_task(taskId));
    }

    /// @notice End of the commit window of (round, attempt), which must be the task's current attempt.
    function commitDeadline(uint256 taskId, uint256 round, uint256 attempt) external view returns (uint256) {
        _task(taskId);
        RoundState storage rs = _currentAttempt(taskId, round, attempt);
        return rs.commitDeadline;
    }

    // ================================================================== internals: relays

    function _relayVotes(
        Task storage t,
        RoundState storage rs,
        uint256 taskId,
        bytes32 modelHash,
        Participant[] calldata list,
        SignedVote[] calldata votes
    ) internal {
        uint256 len = votes.length;
        VoteCtx memory c = _voteCtx(taskId, rs);
        for (uint256 i; i < len; ++i) {
            SignedVote calldata v = votes[i];
            bytes32 digest = _hashTypedDataV4(
                keccak256(
                    abi.encode(VOTE_TYPEHASH, taskId, c.round, c.attempt, modelHash, v.accept, uint256(v.accuracyBps))
                )
            );
            address signer = ECDSA.recover(digest, v.r, v.vs);
            if (list[v.index].miner != signer) revert NotParticipant(signer);
            _vote(c, signer, v.index, v.accept, v.accuracyBps);
        }
        _voteStore(rs, c);
        if (c.votes == rs.participants) _finalize(taskId, t, rs);
    }

    function _relayReveals(
        Task storage t,
        RoundState storage rs,
        uint256 taskId,
        Participant[] calldata list,
        SignedReveal[] calldata reveals
    ) internal {
        uint256 len = reveals.length;
        RevealCtx memory c = _revealCtx(taskId, t, rs);
        for (uint256 i; i < len; ++i) {
            SignedReveal calldata r = reveals[i];
            address signer = ECDSA.recover(
                _hashTypedDataV4(keccak256(abi.encode(REVEAL_TYPEHASH, taskId, c.round, c.attempt, r.score, r.nonce))),
                r.r,
                r.vs
            );
            if (list[r.index].miner != signer) revert NotParticipant(signer);
            _reveal(c, signer, list[r.index].commitment, r.score, r.nonce);
        }
        _revealStore(rs, c);
        if (c.reveals + c.faults == list.length) _settle(taskId, t, rs, list);
    }

    // ================================================================== internals: phases

    function _checkRound(RoundState storage rs, uint256 round, uint256 attempt) internal view {
        if (round != rs.round || attempt != rs.attempt) revert WrongRound(rs.round, rs.attempt, round, attempt);
    }

    function _currentAttempt(uint256 taskId, uint256 round, uint256 attempt) internal view returns (RoundState storage rs) {
        rs = _rounds[taskId];
        if (rs.phase == Phase.Idle) revert WrongPhase(Phase.Commit, Phase.Idle);
        _checkRound(rs, round, attempt);
    }

    function _commitPhase(uint256 taskId, uint256 round, uint256 attempt) internal view returns (RoundState storage rs) {
        _task(taskId);
        rs = _rounds[taskId];
        if (rs.phase != Phase.Commit) revert WrongPhase(Phase.Commit, rs.phase);
        _checkRound(rs, round, attempt);
        if (block.timestamp > rs.commitDeadline) revert WindowClosed();
    }

    function _votePhase(uint256 taskId, uint256 round, uint256 attempt, bytes32 modelHash, Participant[] calldata list)
        internal
        view
        returns (Task storage t, RoundState storage rs)
    {
        t = _task(taskId);
        rs = _rounds[taskId];
        if (rs.phase != Phase.Voting) revert WrongPhase(Phase.Voting, rs.phase);
        _checkRound(rs, round, attempt);
        if (block.timestamp > rs.deadline) revert WindowClosed();
        if (modelHash != rs.modelHash) revert ModelMismatch();
        _checkList(rs, list);
    }

    function _revealPhase(uint256 taskId, uint256 round, uint256 attempt, Participant[] calldata list)
        internal
        view
        returns (Task storage t, RoundState storage rs)
    {
        t = _task(taskId);
        rs = _rounds[taskId];
        if (rs.phase != Phase.Revealing) revert WrongPhase(Phase.Revealing, rs.phase);
        _checkRound(rs, round, attempt);
        if (block.timestamp > rs.deadline) revert WindowClosed();
        _checkList(rs, list);
    }

    /// @dev `list` must be exactly the attempt's participants in commit order.
    function _checkList(RoundState storage rs, Participant[] calldata list) internal view {
        uint256 len = list.length;
        if (len != rs.participants) revert ParticipantsMismatch();
        bytes32 h = bytes32(uint256(rs.attempt));
        for (uint256 i; i < len; ++i) {
            h = keccak256(abi.encode(h, list[i].miner, list[i].commitment));
        }
        if (h != rs.participantsHash) revert ParticipantsMismatch();
    }

    function _storeSelection(uint256 taskId, uint32 epoch, uint32[] calldata selected) internal {
        mapping(uint256 => uint256) storage sb = _selectBits[taskId];
        uint256 count = minerCount;
        uint256 cur = type(uint256).max;
        uint256 w;
        uint256 len = selected.length;
        for (uint256 i; i < len; ++i) {
            uint32 idx = selected[i];
            if (idx == 0 || idx > count) revert InvalidParams("selected");
            uint256 wi = idx / 224;
            if (wi != cur) {
                if (cur != type(uint256).max) sb[cur] = w;
                cur = wi;
                w = sb[wi];
                if (w >> 224 != epoch) w = uint256(epoch) << 224;
            }
            uint256 bit = uint256(1) << (idx % 224);
            if (w & bit != 0) revert DuplicateSelection(idx);
            w |= bit;
        }
        if (cur != type(uint256).max) sb[cur] = w;
    }

    // ================================================================== internals: actions
    // Batches work on a memory copy of the round counters and write them back once.

    struct CommitCtx {
        uint256 taskId;
        uint32 epoch;
        uint32 round;
        uint32 attempt;
        uint16 n;
        bytes32 h;
        uint128 minStake;
        uint256 selWordIndex;
        uint256 selWord;
    }

    function _commitCtx(uint256 taskId, RoundState storage rs) internal view returns (CommitCtx memory c) {
        c.taskId = taskId;
        c.epoch = rs.attempt;
        c.round = rs.round;
        c.attempt = rs.attempt;
        c.n = rs.participants;
        c.h = rs.participantsHash;
        c.minStake = _tasks[taskId].minStake;
        c.selWordIndex = type(uint256).max;
    }

    function _commitStore(RoundState storage rs, CommitCtx memory c) internal {
        rs.participants = c.n;
        rs.participantsHash = c.h;
    }

    function _commitOne(CommitCtx memory c, bytes32 ciphertextHash, bytes32 commitment, address account) internal {
        // Entries that cannot count are skipped, not reverted, so that one bad entry (a miner slashed below
        // the minimum stake, unbonding, not selected, a garbage signature) cannot sink the others' batch:
        // not registered (includes any garbage signer), unbonding, under the task's minimum stake, not
        // selected in this attempt, or already committed in it (idempotent relay).
        Miner memory m = _miners[account];
        if (!m.registered || m.unlockAt != 0 || m.stake < c.minStake) return;
        uint256 wi = m.index / 224;
        if (wi != c.selWordIndex) {
            c.selWordIndex = wi;
            c.selWord = _selectBits[c.taskId][wi];
        }
        if (c.selWord >> 224 != c.epoch || c.selWord & (uint256(1) << (m.index % 224)) == 0) return;
        mapping(address => uint256) storage mrs = _minerRounds[c.taskId];
        uint256 mr = mrs[account];
        if (uint32(mr) == c.epoch) return;
        if ((mr >> FLAGS_SHIFT) & OPEN == 0) {
            // first open participation in this task: the stake stays locked until it is released
            _miners[account].openTasks = m.openTasks + 1;
        }
        c.n += 1;
        c.h = keccak256(abi.encode(c.h, account, commitment));
        mrs[account] = uint256(c.epoch) | (uint256(COMMITTED | OPEN) << FLAGS_SHIFT)
            | (mr & (PENDING_MASK << PENDING_SHIFT));
        emit Committed(c.taskId, account, c.round, c.attempt, ciphertextHash, commitment);
    }

    struct VoteCtx {
        uint256 taskId;
        uint32 epoch;
        uint32 round;
        uint32 attempt;
        uint16 votes;
        uint16 accepts;
        uint256 word;
        uint256[] bits; // voted bitmap words: 224 participant bits + the epoch in the top 32 bits
    }

    function _voteCtx(uint256 taskId, RoundState storage rs) internal view returns (VoteCtx memory v) {
        v.taskId = taskId;
        v.epoch = rs.attempt;
        v.round = rs.round;
        v.attempt = rs.attempt;
        v.votes = rs.votes;
        v.accepts = rs.accepts;
        v.word = _accuracies[taskId][v.votes >> 4];
        v.bits = _loadVoteBits(taskId, v.epoch, rs.participants);
    }

    function _loadVoteBits(uint256 taskId, uint32 epoch, uint256 n) internal view returns (uint256[] memory bits) {
        uint256 nWords = (n + 223) / 224;
        bits = new uint256[](nWords);
        mapping(uint256 => uint256) storage vb = _voteBits[taskId];
        for (uint256 i; i < nWords; ++i) {
            uint256 w = vb[i];
            bits[i] = (w >> 224) == epoch ? w : uint256(epoch) << 224;
        }
    }

    function _voteStore(RoundState storage rs, VoteCtx memory v) internal {
        if (v.votes & 15 != 0) _accuracies[v.taskId][v.votes >> 4] = v.word;
        rs.votes = v.votes;
        rs.accepts = v.accepts;
        mapping(uint256 => uint256) storage vb = _voteBits[v.taskId];
        for (uint256 i; i < v.bits.length; ++i) {
            vb[i] = v.bits[i];
        }
    }

    /// @dev `account` is list[index] (checked by the caller against the participants hash).
    function _vote(VoteCtx memory v, address account, uint256 index, bool accept, uint256 accuracyBps) internal {
        uint256 bit = uint256(1) << (index % 224);
        uint256 w = v.bits[index / 224];
        if (w & bit != 0) revert AlreadyVoted(account);
        if (accuracyBps > BPS) revert AccuracyOutOfRange(accuracyBps);
        v.bits[index / 224] = w | bit;
        uint16 idx = v.votes;
        uint256 shift = (uint256(idx) & 15) << 4;
        v.word = (v.word & ~(uint256(0xffff) << shift)) | (accuracyBps << shift);
        if (idx & 15 == 15) {
            _accuracies[v.taskId][idx >> 4] = v.word;
            v.word = _accuracies[v.taskId][(idx >> 4) + 1];
        }
        v.votes = idx + 1;
        if (accept) v.accepts += 1;
        emit Voted(v.taskId, account, accept, uint16(accuracyBps));
    }

    struct RevealCtx {
        uint256 taskId;
        uint32 epoch;
        uint32 round;
        uint32 attempt;
        uint16 reveals;
        uint16 faults;
        uint256 cap;
    }

    function _revealCtx(uint256 taskId, Task storage t, RoundState storage rs) internal view returns (RevealCtx memory c) {
        c.taskId = taskId;
        c.epoch = rs.attempt;
        c.round = rs.round;
        c.attempt = rs.attempt;
        c.reveals = rs.reveals;
        c.faults = rs.faults;
        c.cap = _maxScore(t);
    }

    function _revealStore(RoundState storage rs, RevealCtx memory c) internal {
        rs.reveals = c.reveals;
        rs.faults = c.faults;
    }

    function _reveal(RevealCtx memory c, address account, bytes32 commitment, uint256 score, bytes32 nonce) internal {
        mapping(address => uint256) storage mrs = _minerRounds[c.taskId];
        uint256 mr = mrs[account];
        if ((mr >> FLAGS_SHIFT) & (REVEALED | FAULT) != 0) revert AlreadyRevealed(account);
        bool opens = keccak256(abi.encode(score, nonce, c.taskId, uint256(c.round), uint256(c.attempt), account))
            == commitment;
        if (!opens) {
            // A signed opening that does not match proves nothing against the miner (it may be a stale
            // message replayed by the relayer): ignore it; the miner may still reveal in the window.
            emit RevealInvalid(c.taskId, account, score);
            return;
        }
        if (score > c.cap) {
            // The miner committed to a score the task's k and quantization cannot produce: a provable fault.
            mrs[account] = mr | (uint256(FAULT) << FLAGS_SHIFT);
            c.faults += 1;
            emit RevealInvalid(c.taskId, account, score);
            return;
        }
        mrs[account] = (mr & ~(SCORE_MASK << SCORE_SHIFT)) | (uint256(REVEALED) << FLAGS_SHIFT) | (score << SCORE_SHIFT);
        c.reveals += 1;
        emit Revealed(c.taskId, account, score);
    }

    // ================================================================== internals: outcome

    function _finalize(uint256 taskId, Task storage t, RoundState storage rs) internal {
        uint256 n = rs.participants;
        uint16 accepts = rs.accepts;
        if (uint256(accepts) * BPS >= uint256(t.quorumBps) * n) {
            uint16 accuracy = _medianAccuracy(taskId, rs.votes);
            rs.phase = Phase.Revealing;
            rs.accuracyBps = accuracy;
            rs.deadline = uint40(block.timestamp + t.roundWindow);
            t.finalizedRounds += 1;
            t.modelHash = rs.modelHash;
            if (accuracy > t.bestAccuracyBps) t.bestAccuracyBps = accuracy;
            emit RoundFinalized(taskId, rs.round, rs.attempt, rs.modelHash, accuracy);
            if (
                t.status == TaskStatus.Active
                    && (t.finalizedRounds == t.rounds || (t.targetRevealed && accuracy >= t.targetBps))
            ) {
                _complete(taskId, t);
            }
        } else {
            emit RoundRejected(taskId, rs.round, rs.attempt, accepts, rs.votes);
            _retry(rs);
            _closeIfIdle(taskId, t);
        }
    }

    struct SettleCtx {
        uint256 perRound;
        uint256 fee;
        uint256 aggShare;
        uint256 voterPool;
        uint256 scorePool;
        uint256 weightCap;
        uint256 totalWeight;
        uint256 perVoter;
        uint256 paidScore;
        uint256 paidVoters;
    }

    function _settle(uint256 taskId, Task storage t, RoundState storage rs, Participant[] calldata list) internal {
        SettleCtx memory s;
        s.perRound = uint256(t.pool) / t.rounds;
        s.fee = (s.perRound * t.feeBps) / BPS;
        s.aggShare = (s.perRound * t.aggregatorShareBps) / BPS;
        uint256 minersPool = s.perRound - s.fee - s.aggShare;
        s.voterPool = (minersPool * t.voterShareBps) / BPS;
        s.scorePool = minersPool - s.voterPool;
        uint256 len = list.length;
        mapping(address => uint256) storage mrs = _minerRounds[taskId];
        // pass 1: revealed scores -> weight cap = 2 x median (lower median), total weight
        uint256[] memory words = new uint256[](len);
        uint256[] memory revealed = new uint256[](rs.reveals);
        uint256 r;
        for (uint256 i; i < len; ++i) {
            uint256 mr = mrs[list[i].miner];
            words[i] = mr;
            if ((mr >> FLAGS_SHIFT) & REVEALED != 0) revealed[r++] = (mr >> SCORE_SHIFT) & SCORE_MASK;
        }
        if (r != 0) {
            s.weightCap = 2 * _radixSelect(revealed, (r - 1) / 2, 8);
            for (uint256 i; i < len; ++i) {
                uint256 mr = words[i];
                if ((mr >> FLAGS_SHIFT) & REVEALED != 0) s.totalWeight += _min((mr >> SCORE_SHIFT) & SCORE_MASK, s.weightCap);
            }
        }
        uint256[] memory voted = _loadVoteBits(taskId, rs.attempt, len);
        if (rs.votes != 0) s.perVoter = s.voterPool / rs.votes;
        // pass 2: accrue rewards, slash missing or invalid reveals
        for (uint256 i; i < len; ++i) {
            address account = list[i].miner;
            uint256 mr = words[i];
            uint256 amount;
            if (voted[i / 224] & (uint256(1) << (i % 224)) != 0) {
                amount = s.perVoter;
                s.paidVoters += amount;
            }
            if ((mr >> FLAGS_SHIFT) & REVEALED != 0) {
                if (s.totalWeight != 0) {
                    uint256 a = (s.scorePool * _min((mr >> SCORE_SHIFT) & SCORE_MASK, s.weightCap)) / s.totalWeight;
                    amount += a;
                    s.paidScore += a;
                }
            } else {
                _slash(account, taskId, rs.round, t.slashBps);
            }
            if (amount == 0) continue;
            uint256 pending = ((mr >> PENDING_SHIFT) & PENDING_MASK) + amount;
            if (pending > PENDING_MASK) {
                _credit(account, amount);
            } else {
                mrs[account] = (mr & ~(PENDING_MASK << PENDING_SHIFT)) | (pending << PENDING_SHIFT);
            }
        }
        uint256 returned = minersPool - s.paidScore - s.paidVoters;
        t.released += uint128(s.perRound);
        _creditQuiet(treasury, s.fee);
        _creditQuiet(t.aggregator, s.aggShare);
        _creditQuiet(t.publisher, returned);
        emit RoundSettled(taskId, rs.round, s.paidScore, s.paidVoters, s.fee, s.aggShare, returned, s.weightCap);
        rs.phase = Phase.Idle;
        rs.round += 1;
        _closeIfIdle(taskId, t);
    }

    function _retry(RoundState storage rs) internal {
        rs.phase = Phase.Idle;
    }

    function _medianAccuracy(uint256 taskId, uint16 count) internal view returns (uint16) {
        if (count == 0) return 0;
        uint256[] memory a = new uint256[](count);
        mapping(uint256 => uint256) storage acc = _accuracies[taskId];
        uint256 word;
        for (uint256 i; i < count; ++i) {
            if (i & 15 == 0) word = acc[i >> 4];
            a[i] = (word >> ((i & 15) << 4)) & 0xffff;
        }
        return uint16(_radixSelect(a, (count - 1) / 2, 2));
    }

    /// @dev The element of rank `k` (0-based) of `a` (reordered in place), whose values fit in `nBytes`
    ///      bytes. Up to 32 values: insertion sort. Beyond: one 256-bucket histogram pass per byte, most
    ///      significant nonzero byte first — O(nBytes * (len + 256)) whatever the (adversarial) values.
    function _radixSelect(uint256[] memory a, uint256 k, uint256 nBytes) internal pure returns (uint256 prefix) {
        uint256 len = a.length;
        if (len <= 32) {
            for (uint256 i = 1; i < len; ++i) {
                uint256 v = a[i];
                uint256 j = i;
                while (j > 0 && a[j - 1] > v) {
                    a[j] = a[j - 1];
                    --j;
                }
                a[j] = v;
            }
            return a[k];
        }
        uint256 all;
        for (uint256 i; i < len; ++i) {
            all |= a[i];
        }
        while (nBytes > 1 && all >> ((nBytes - 1) * 8) == 0) --nBytes;
        uint256[] memory hist = new uint256[](256);
        uint256 prefixMask;
        for (uint256 b = nBytes; b > 0; --b) {
            uint256 shift = (b - 1) * 8;
            for (uint256 j; j < 256; ++j) {
                hist[j] = 0;
            }
            for (uint256 i; i < len; ++i) {
                uint256 v = a[i];
                if (v & prefixMask == prefix) hist[(v >> shift) & 0xff] += 1;
            }
            uint256 bucket;
            for (; bucket < 256; ++bucket) {
                uint256 h = hist[bucket];
                if (k < h) break;
                k -= h;
            }
            prefix |= bucket << shift;
            prefixMask |= uint256(0xff) << shift;
        }
    }

    function _min(uint256 a, uint256 b) internal pure returns (uint256) {
        return a < b ? a : b;
    }

    function _maxScore(Task storage t) internal view returns (uint256) {
        uint256 q = (uint256(1) << (t.quantBits - 1)) - 1;
        return uint256(t.k) * q * q;
    }
}
