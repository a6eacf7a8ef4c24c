// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ModelMineBase} from "./ModelMineBase.sol";
import {MinerRegistry} from "./MinerRegistry.sol";
import {TaskRegistry} from "./TaskRegistry.sol";

/// @title ModelMine — rounds, voting, reveals and rewards of federated-learning tasks
/// @notice One round attempt (epoch) goes Commit -> Voting -> Revealing -> (settled) -> next round.
///         Commit: miners' signed Submissions (relayed in a batch, or sent directly) record a commitment
///         keccak256(abi.encode(score, nonce, taskId, round, miner)); the aggregator's `propose` closes
///         the commit phase with the candidate block (model hash, support size k).
///         Voting: participants vote (accept, accuracyBps); when all voted, the window ended or
///         rejection is certain, `finalize` accepts the round (quorumBps of participants accepted;
///         the round's reward becomes owed) or rejects it (the same round is retried in a new epoch).
///         Revealing: participants open their commitments; when all revealed or the window ended the
///         round is settled: fee to the treasury, aggregator share, the rest split by verified score;
///         non-revealers and invalid reveals are slashed.
/// @dev EIP-712 domain ("ModelMine", "1", chainid, this). Signatures are EIP-2098 compact (r, vs).
contract ModelMine is MinerRegistry, TaskRegistry, EIP712 {
    bytes32 internal constant SUBMISSION_TYPEHASH = keccak256(
        "Submission(uint256 taskId,uint256 round,bytes32 supportHash,bytes32 ciphertextHash,bytes32 commitment)"
    );
    bytes32 internal constant VOTE_TYPEHASH =
        keccak256("Vote(uint256 taskId,uint256 round,bytes32 modelHash,bool accept,uint256 accuracyBps)");
    bytes32 internal constant REVEAL_TYPEHASH = keccak256("Reveal(uint256 taskId,uint256 round,uint256 score,bytes32 nonce)");

    /// @param owner_ admin (treasury, network parameters, pause)
    /// @param treasury_ receives network fees and slashed stake
    /// @param feeBps_ network fee per round reward, basis points
    /// @param minStake_ minimum miner stake, wei
    /// @param slashBps_ share of stake slashed per missing or invalid reveal
    /// @param unbonding_ seconds between requestUnstake and withdrawStake
    constructor(address owner_, address treasury_, uint16 feeBps_, uint128 minStake_, uint16 slashBps_, uint32 unbonding_)
        ModelMineBase(owner_, treasury_, feeBps_, minStake_, slashBps_, unbonding_)
        EIP712("ModelMine", "1")
    {}

    // ================================================================== commit phase

    /// @notice Record the caller's own submission (fallback when the relayer censors).
    function commit(uint256 taskId, uint256 round, bytes32 supportHash, bytes32 ciphertextHash, bytes32 commitment)
        external
        whenNotPaused
    {
        (Task storage t, RoundState storage rs) = _commitPhase(taskId, round);
        _commit(t, rs, taskId, supportHash, ciphertextHash, commitment, msg.sender);
    }

    /// @notice Relay miners' signed submissions for (taskId, round) sharing `supportHash`.
    function commitBatch(uint256 taskId, uint256 round, bytes32 supportHash, SignedSubmission[] calldata subs)
        external
        whenNotPaused
    {
        (Task storage t, RoundState storage rs) = _commitPhase(taskId, round);
        _commitSigned(t, rs, taskId, round, supportHash, subs);
    }

    /// @notice The aggregator proposes the candidate block: relays the last submissions (may be empty),
    ///         closes the commit phase and opens the vote window.
    /// @param modelHash keccak256 of the candidate global model's safetensors bytes
    /// @param k support size (number of coordinates each participant sent)
    function propose(
        uint256 taskId,
        uint256 round,
        bytes32 modelHash,
        bytes32 supportHash,
        uint32 k,
        SignedSubmission[] calldata subs
    ) external whenNotPaused {
        (Task storage t, RoundState storage rs) = _commitPhase(taskId, round);
        if (msg.sender != t.aggregator) revert NotAggregator(msg.sender);
        if (modelHash == bytes32(0) || k == 0) revert InvalidParams("candidate");
        _commitSigned(t, rs, taskId, round, supportHash, subs);
        uint16 n = rs.participants;
        if (n == 0) revert NoParticipants();
        if (rs.supportHash != supportHash) revert SupportMismatch();
        rs.phase = Phase.Voting;
        rs.k = k;
        rs.modelHash = modelHash;
        rs.deadline = uint40(block.timestamp + t.roundWindow);
        emit RoundProposed(taskId, uint32(round), rs.epoch, modelHash, supportHash, k, n);
    }

    // ================================================================== voting

    /// @notice The caller (a participant) votes on the candidate directly.
    /// @param list the round's participants in submission order (from the Committed events)
    /// @param index the caller's position in `list`
    function vote(
        uint256 taskId,
        uint256 round,
        bytes32 modelHash,
        bool accept,
        uint256 accuracyBps,
        Participant[] calldata list,
        uint256 index
    ) external whenNotPaused {
        (Task storage t, RoundState storage rs) = _votePhase(taskId, round, modelHash, list);
        if (list[index].miner != msg.sender) revert NotParticipant(msg.sender);
        VoteCtx memory c = _voteCtx(taskId, rs);
        _vote(c, msg.sender, index, accept, accuracyBps);
        _voteStore(rs, c);
        if (c.votes == rs.participants) _finalize(taskId, t, rs);
    }

    /// @notice Relay participants' signed votes; finalizes in the same call once everyone voted.
    function voteBatch(
        uint256 taskId,
        uint256 round,
        bytes32 modelHash,
        Participant[] calldata list,
        SignedVote[] calldata votes
    ) external whenNotPaused {
        (Task storage t, RoundState storage rs) = _votePhase(taskId, round, modelHash, list);
        _relayVotes(t, rs, taskId, modelHash, list, votes);
    }

    /// @notice Relay signed votes and, in the same call, signed reveals: once every participant voted
    ///         and the round is finalized, the reveals are processed (and the round settled when
    ///         complete); when the round is rejected the reveals are ignored. Saves a transaction and
    ///         a second copy of `list` per round.
    function voteRevealBatch(
        uint256 taskId,
        uint256 round,
        bytes32 modelHash,
        Participant[] calldata list,
        SignedVote[] calldata votes,
        SignedReveal[] calldata reveals
    ) external whenNotPaused {
        (Task storage t, RoundState storage rs) = _votePhase(taskId, round, modelHash, list);
        _relayVotes(t, rs, taskId, modelHash, list, votes);
        if (rs.phase == Phase.Revealing) _relayReveals(t, rs, taskId, list, reveals);
    }

    /// @notice Decide the current candidate (anyone): allowed when all participants voted, the vote
    ///         window ended, or acceptance has become impossible.
    function finalize(uint256 taskId) external whenNotPaused {
        Task storage t = _activeTask(taskId);
        RoundState storage rs = _rounds[taskId];
        if (rs.phase != Phase.Voting) revert WrongPhase(Phase.Voting, rs.phase);
        uint256 n = rs.participants;
        bool impossible = (n - (rs.votes - rs.accepts)) * BPS < uint256(t.quorumBps) * n;
        if (rs.votes < n && block.timestamp <= rs.deadline && !impossible) revert WindowOpen();
        _finalize(taskId, t, rs);
    }

    // ================================================================== reveals

    /// @notice The caller opens its own commitment. Reverts on a mismatching or out-of-range score
    ///         (the miner then counts as missing and is slashed at settlement).
    /// @param list the round's participants in submission order (from the Committed events)
    /// @param index the caller's position in `list`
    function reveal(
        uint256 taskId,
        uint256 round,
        uint256 score,
        bytes32 nonce,
        Participant[] calldata list,
        uint256 index
    ) external {
        (Task storage t, RoundState storage rs) = _revealPhase(taskId, round, list);
        if (list[index].miner != msg.sender) revert NotParticipant(msg.sender);
        RevealCtx memory c = _revealCtx(taskId, t, rs);
        _reveal(c, msg.sender, list[index].commitment, score, nonce, true);
        _revealStore(rs, c);
        if (c.reveals + c.faults == list.length) _settle(taskId, t, rs, list);
    }

    /// @notice Relay participants' signed reveals. A reveal whose score exceeds the round's maximum is
    ///         recorded as a fault (slashed at settlement); one that does not open its commitment is
    ///         skipped (RevealInvalid) and the miner may still reveal before the window ends.
    ///         Settles the round in the same call once every participant revealed.
    function revealBatch(uint256 taskId, uint256 round, Participant[] calldata list, SignedReveal[] calldata reveals)
        external
    {
        (Task storage t, RoundState storage rs) = _revealPhase(taskId, round, list);
        _relayReveals(t, rs, taskId, list, reveals);
    }

    /// @notice Settle a finalized round after its reveal window (anyone): pays revealers by score,
    ///         the fee and the aggregator share, slashes those who did not reveal validly.
    function settle(uint256 taskId, Participant[] calldata list) external {
        Task storage t = _task(taskId);
        RoundState storage rs = _rounds[taskId];
        if (rs.phase != Phase.Revealing) revert WrongPhase(Phase.Revealing, rs.phase);
        if (block.timestamp <= rs.deadline && rs.reveals + rs.faults < rs.participants) revert WindowOpen();
        _checkList(rs, list);
        _settle(taskId, t, rs, list);
    }

    /// @notice Largest score a participant may reveal in the current round: k * (2^(bits-1) - 1)^2.
    function maxScore(uint256 taskId) external view returns (uint256) {
        return _maxScore(_task(taskId), _rounds[taskId]);
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
                keccak256(abi.encode(VOTE_TYPEHASH, taskId, c.round, modelHash, v.accept, uint256(v.accuracyBps)))
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
                _hashTypedDataV4(keccak256(abi.encode(REVEAL_TYPEHASH, taskId, c.round, r.score, r.nonce))), r.r, r.vs
            );
            if (list[r.index].miner != signer) revert NotParticipant(signer);
            _reveal(c, signer, list[r.index].commitment, r.score, r.nonce, false);
        }
        _revealStore(rs, c);
        if (c.reveals + c.faults == list.length) _settle(taskId, t, rs, list);
    }

    // ================================================================== internals: phases

    function _commitPhase(uint256 taskId, uint256 round) internal view returns (Task storage t, RoundState storage rs) {
        t = _activeTask(taskId);
        if (block.timestamp > t.deadline) revert DeadlinePassed();
        rs = _rounds[taskId];
        if (rs.phase != Phase.Commit) revert WrongPhase(Phase.Commit, rs.phase);
        if (round != rs.round) revert WrongRound(rs.round, round);
    }

    function _votePhase(uint256 taskId, uint256 round, bytes32 modelHash, Participant[] calldata list)
        internal
        view
        returns (Task storage t, RoundState storage rs)
    {
        t = _activeTask(taskId);
        rs = _rounds[taskId];
        if (rs.phase != Phase.Voting) revert WrongPhase(Phase.Voting, rs.phase);
        if (round != rs.round) revert WrongRound(rs.round, round);
        if (block.timestamp > rs.deadline) revert WindowClosed();
        if (modelHash != rs.modelHash) revert ModelMismatch();
        _checkList(rs, list);
    }

    function _revealPhase(uint256 taskId, uint256 round, Participant[] calldata list)
        internal
        view
        returns (Task storage t, RoundState storage rs)
    {
        t = _task(taskId);
        rs = _rounds[taskId];
        if (rs.phase != Phase.Revealing) revert WrongPhase(Phase.Revealing, rs.phase);
        if (round != rs.round) revert WrongRound(rs.round, round);
        if (block.timestamp > rs.deadline) revert WindowClosed();
        _checkList(rs, list);
    }

    /// @dev `list` must be exactly the epoch's participants in submission order.
    function _checkList(RoundState storage rs, Participant[] calldata list) internal view {
        uint256 len = list.length;
        if (len != rs.participants) revert ParticipantsMismatch();
        bytes32 h = bytes32(uint256(rs.epoch));
        for (uint256 i; i < len; ++i) {
            h = keccak256(abi.encode(h, list[i].miner, list[i].commitment));
        }
        if (h != rs.participantsHash) revert ParticipantsMismatch();
    }

    // ================================================================== internals: actions
    // Batches work on a memory copy of the round counters and write them back once.

    struct CommitCtx {
        uint256 taskId;
        uint32 epoch;
        uint32 round;
        uint16 n;
        bytes32 supportHash;
        bytes32 h;
        uint128 minStake;
    }

    function _commitCtx(uint256 taskId, RoundState storage rs, bytes32 supportHash)
        internal
        view
        returns (CommitCtx memory c)
    {
        c.taskId = taskId;
        c.epoch = rs.epoch;
        c.round = rs.round;
        c.n = rs.participants;
        if (c.n != 0 && rs.supportHash != supportHash) revert SupportMismatch();
        c.supportHash = supportHash;
        c.h = rs.participantsHash;
        c.minStake = minStake;
    }

    function _commitStore(RoundState storage rs, CommitCtx memory c) internal {
        if (rs.supportHash != c.supportHash) rs.supportHash = c.supportHash;
        rs.participants = c.n;
        rs.participantsHash = c.h;
    }

    function _commitSigned(
        Task storage,
        RoundState storage rs,
        uint256 taskId,
        uint256 round,
        bytes32 supportHash,
        SignedSubmission[] calldata subs
    ) internal {
        uint256 len = subs.length;
        if (len == 0) return;
        CommitCtx memory c = _commitCtx(taskId, rs, supportHash);
        for (uint256 i; i < len; ++i) {
            SignedSubmission calldata s = subs[i];
            bytes32 digest = _hashTypedDataV4(
                keccak256(abi.encode(SUBMISSION_TYPEHASH, taskId, round, supportHash, s.ciphertextHash, s.commitment))
            );
            _commitOne(c, s.ciphertextHash, s.commitment, ECDSA.recover(digest, s.r, s.vs));
        }
        _commitStore(rs, c);
    }

    function _commit(
        Task storage,
        RoundState storage rs,
        uint256 taskId,
        bytes32 supportHash,
        bytes32 ciphertextHash,
        bytes32 commitment,
        address account
    ) internal {
        CommitCtx memory c = _commitCtx(taskId, rs, supportHash);
        _commitOne(c, ciphertextHash, commitment, account);
        _commitStore(rs, c);
    }

    function _commitOne(CommitCtx memory c, bytes32 ciphertextHash, bytes32 commitment, address account) internal {
        Miner memory m = _miners[account];
        if (!m.registered) revert NotRegistered(account);
        if (m.unlockAt != 0) revert Unbonding(account);
        if (m.stake < c.minStake) revert InsufficientStake(account);
        mapping(address => uint256) storage mrs = _minerRounds[c.taskId];
        uint256 mr = mrs[account];
        if (uint32(mr) == c.epoch) revert AlreadyCommitted(account);
        uint256 tag = uint256(commitment) & TAG_MASK;
        if (uint32(mr >> ROUND_SHIFT) == c.round && (mr >> TAG_SHIFT) & TAG_MASK == tag) {
            revert SignatureReplayed(account);
        }
        uint16 n = c.n;
        if (n >= MAX_PARTICIPANTS) revert TooManyParticipants();
        c.n = n + 1;
        c.h = keccak256(abi.encode(c.h, account, commitment));
        mrs[account] = uint256(c.epoch) | (uint256(c.round) << ROUND_SHIFT) | (uint256(COMMITTED) << FLAGS_SHIFT)
            | (tag << TAG_SHIFT) | (mr & (PENDING_MASK << PENDING_SHIFT));
        emit Committed(c.taskId, account, c.round, c.epoch, ciphertextHash, commitment);
    }

    struct VoteCtx {
        uint256 taskId;
        uint32 epoch;
        uint32 round;
        uint16 votes;
        uint16 accepts;
        uint256 word;
        uint256[] bits; // voted bitmap words: 224 participant bits + the epoch in the top 32 bits
    }

    function _voteCtx(uint256 taskId, RoundState storage rs) internal view returns (VoteCtx memory v) {
        v.taskId = taskId;
        v.epoch = rs.epoch;
        v.round = rs.round;
        v.votes = rs.votes;
        v.accepts = rs.accepts;
        v.word = _accuracies[taskId][v.votes >> 4];
        uint256 nWords = (uint256(rs.participants) + 223) / 224;
        v.bits = new uint256[](nWords);
        mapping(uint256 => uint256) storage vb = _voteBits[taskId];
        for (uint256 i; i < nWords; ++i) {
            uint256 w = vb[i];
            v.bits[i] = (w >> 224) == v.epoch ? w : uint256(v.epoch) << 224;
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
        emit Voted(v.taskId, account, v.round, accept, uint16(accuracyBps));
    }

    struct RevealCtx {
        uint256 taskId;
        uint32 epoch;
        uint32 round;
        uint16 reveals;
        uint16 faults;
        uint128 total;
        uint256 cap;
    }

    function _revealCtx(uint256 taskId, Task storage t, RoundState storage rs) internal view returns (RevealCtx memory c) {
        c.taskId = taskId;
        c.epoch = rs.epoch;
        c.round = rs.round;
        c.reveals = rs.reveals;
        c.faults = rs.faults;
        c.total = rs.scoreEpoch == c.epoch ? rs.totalScore : 0;
        c.cap = _maxScore(t, rs);
    }

    function _revealStore(RoundState storage rs, RevealCtx memory c) internal {
        rs.reveals = c.reveals;
        rs.faults = c.faults;
        rs.totalScore = c.total;
        rs.scoreEpoch = c.epoch;
    }

    function _reveal(RevealCtx memory c, address account, bytes32 commitment, uint256 score, bytes32 nonce, bool strict)
        internal
    {
        mapping(address => uint256) storage mrs = _minerRounds[c.taskId];
        uint256 mr = mrs[account];
        if ((mr >> FLAGS_SHIFT) & (REVEALED | FAULT) != 0) revert AlreadyRevealed(account);
        bool opens = keccak256(abi.encode(score, nonce, c.taskId, uint256(c.round), account)) == commitment;
        if (!opens) {
            // A signed opening that does not match proves nothing against the miner (it may be a
            // stale message replayed by the relayer): ignore it; the miner may still reveal in the
            // window and is slashed at settlement if it never does.
            if (strict) revert RevealMismatch(account);
            emit RevealInvalid(c.taskId, account, c.round, score);
            return;
        }
        if (score > c.cap) {
            // The miner committed to a score its quantization cannot produce: a provable fault.
            if (strict) revert ScoreTooLarge(score, c.cap);
            mrs[account] = mr | (uint256(FAULT) << FLAGS_SHIFT);
            c.faults += 1;
            emit RevealInvalid(c.taskId, account, c.round, score);
            return;
        }
        mrs[account] = (mr & ~(SCORE_MASK << SCORE_SHIFT)) | (uint256(REVEALED) << FLAGS_SHIFT) | (score << SCORE_SHIFT);
        c.reveals += 1;
        c.total += uint128(score);
        emit Revealed(c.taskId, account, c.round, score);
    }

    // ================================================================== internals: outcome

    function _finalize(uint256 taskId, Task storage t, RoundState storage rs) internal {
        uint256 n = rs.participants;
        uint16 accepts = rs.accepts;
        uint32 round = rs.round;
        if (uint256(accepts) * BPS >= uint256(t.quorumBps) * n) {
            uint16 accuracy = _median(taskId, rs.votes);
            rs.phase = Phase.Revealing;
            rs.accuracyBps = accuracy;
            rs.deadline = uint40(block.timestamp + t.roundWindow);
            t.finalizedRounds += 1;
            t.modelHash = rs.modelHash;
            if (accuracy > t.bestAccuracyBps) t.bestAccuracyBps = accuracy;
            emit RoundFinalized(taskId, round, rs.epoch, rs.modelHash, accuracy);
            if (t.finalizedRounds == t.rounds || (t.targetRevealed && accuracy >= t.targetBps)) {
                _close(taskId, t, TaskStatus.Completed);
            }
        } else {
            emit RoundRejected(taskId, round, rs.epoch, accepts, rs.votes);
            _nextEpoch(rs, round);
        }
    }

    function _settle(uint256 taskId, Task storage t, RoundState storage rs, Participant[] calldata list) internal {
        uint256 perRound = uint256(t.pool) / t.rounds;
        uint256 fee = (perRound * t.feeBps) / BPS;
        uint256 aggShare = (perRound * t.aggregatorShareBps) / BPS;
        uint256 minersPool = perRound - fee - aggShare;
        uint32 round = rs.round;
        uint256 paid = _payMiners(taskId, round, list, minersPool, rs.scoreEpoch == rs.epoch ? rs.totalScore : 0);
        _creditQuiet(treasury, fee);
        _creditQuiet(t.aggregator, aggShare);
        _creditQuiet(t.publisher, minersPool - paid);
        emit RoundSettled(taskId, round, paid, fee, aggShare, minersPool - paid);
        _nextEpoch(rs, round + 1);
    }

    /// @dev Accrue minersPool * score / total to each valid revealer's pending rewards in this task
    ///      (no event per miner: the Revealed events and RoundSettled determine it); slash the rest.
    function _payMiners(uint256 taskId, uint32 round, Participant[] calldata list, uint256 minersPool, uint256 total)
        internal
        returns (uint256 paid)
    {
        uint256 len = list.length;
        mapping(address => uint256) storage mrs = _minerRounds[taskId];
        for (uint256 i; i < len; ++i) {
            address account = list[i].miner;
            uint256 mr = mrs[account];
            if ((mr >> FLAGS_SHIFT) & REVEALED != 0) {
                uint256 amount = total == 0 ? 0 : (minersPool * ((mr >> SCORE_SHIFT) & SCORE_MASK)) / total;
                if (amount == 0) continue;
                paid += amount;
                uint256 pending = ((mr >> PENDING_SHIFT) & PENDING_MASK) + amount;
                if (pending > PENDING_MASK) {
                    _credit(account, amount);
                } else {
                    mrs[account] = (mr & ~(PENDING_MASK << PENDING_SHIFT)) | (pending << PENDING_SHIFT);
                }
            } else {
                _slash(account, taskId, round);
            }
        }
    }

    function _nextEpoch(RoundState storage rs, uint32 round) internal {
        uint32 epoch = rs.epoch + 1;
        rs.round = round;
        rs.epoch = epoch;
        rs.phase = Phase.Commit;
        rs.participants = 0;
        rs.votes = 0;
        rs.accepts = 0;
        rs.reveals = 0;
        rs.faults = 0;
        rs.participantsHash = bytes32(uint256(epoch));
    }

    function _median(uint256 taskId, uint16 count) internal view returns (uint16) {
        if (count == 0) return 0;
        uint256[] memory a = new uint256[](count);
        mapping(uint256 => uint256) storage acc = _accuracies[taskId];
        uint256 word;
        for (uint256 i; i < count; ++i) {
            if (i & 15 == 0) word = acc[i >> 4];
            uint256 v = (word >> ((i & 15) << 4)) & 0xffff;
            uint256 j = i;
            while (j > 0 && a[j - 1] > v) {
                a[j] = a[j - 1];
                --j;
            }
            a[j] = v;
        }
        return uint16(a[(count - 1) / 2]);
    }

    function _maxScore(Task storage t, RoundState storage rs) internal view returns (uint256) {
        uint256 q = (uint256(1) << (t.quantBits - 1)) - 1;
        return uint256(rs.k) * q * q;
    }
}
