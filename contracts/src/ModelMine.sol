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
    bytes32 public constant SUBMISSION_TYPEHASH = keccak256(
        "Submission(uint256 taskId,uint256 round,bytes32 supportHash,bytes32 ciphertextHash,bytes32 commitment)"
    );
    bytes32 public constant VOTE_TYPEHASH =
        keccak256("Vote(uint256 taskId,uint256 round,bytes32 modelHash,bool accept,uint256 accuracyBps)");
    bytes32 public constant REVEAL_TYPEHASH = keccak256("Reveal(uint256 taskId,uint256 round,uint256 score,bytes32 nonce)");

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
        emit RoundProposed(taskId, uint32(round), rs.epoch, modelHash, k, n);
    }

    // ================================================================== voting

    /// @notice The caller (a participant) votes on the candidate directly.
    function vote(uint256 taskId, uint256 round, bytes32 modelHash, bool accept, uint256 accuracyBps)
        external
        whenNotPaused
    {
        (Task storage t, RoundState storage rs) = _votePhase(taskId, round, modelHash);
        _vote(rs, taskId, msg.sender, accept, accuracyBps);
        if (rs.votes == rs.participants) _finalize(taskId, t, rs);
    }

    /// @notice Relay participants' signed votes; finalizes in the same call once everyone voted.
    function voteBatch(uint256 taskId, uint256 round, bytes32 modelHash, SignedVote[] calldata votes)
        external
        whenNotPaused
    {
        (Task storage t, RoundState storage rs) = _votePhase(taskId, round, modelHash);
        uint256 len = votes.length;
        for (uint256 i; i < len; ++i) {
            SignedVote calldata v = votes[i];
            bytes32 digest = _hashTypedDataV4(
                keccak256(abi.encode(VOTE_TYPEHASH, taskId, round, modelHash, v.accept, uint256(v.accuracyBps)))
            );
            _vote(rs, taskId, ECDSA.recover(digest, v.r, v.vs), v.accept, v.accuracyBps);
        }
        if (rs.votes == rs.participants) _finalize(taskId, t, rs);
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
        _reveal(t, rs, taskId, msg.sender, list[index].commitment, score, nonce, true);
        if (rs.reveals + rs.faults == list.length) _settle(taskId, t, rs, list);
    }

    /// @notice Relay participants' signed reveals. A reveal that does not open its commitment or whose
    ///         score exceeds the round's maximum is recorded as a fault (slashed) instead of reverting.
    ///         Settles the round in the same call once every participant revealed.
    function revealBatch(uint256 taskId, uint256 round, Participant[] calldata list, SignedReveal[] calldata reveals)
        external
    {
        (Task storage t, RoundState storage rs) = _revealPhase(taskId, round, list);
        uint256 len = reveals.length;
        for (uint256 i; i < len; ++i) {
            SignedReveal calldata r = reveals[i];
            address signer = ECDSA.recover(
                _hashTypedDataV4(keccak256(abi.encode(REVEAL_TYPEHASH, taskId, round, r.score, r.nonce))), r.r, r.vs
            );
            if (list[r.index].miner != signer) revert NotParticipant(signer);
            _reveal(t, rs, taskId, signer, list[r.index].commitment, r.score, r.nonce, false);
        }
        if (rs.reveals + rs.faults == list.length) _settle(taskId, t, rs, list);
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

    /// @notice The EIP-712 domain separator miners sign under.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ================================================================== internals: phases

    function _commitPhase(uint256 taskId, uint256 round) internal view returns (Task storage t, RoundState storage rs) {
        t = _activeTask(taskId);
        if (block.timestamp > t.deadline) revert DeadlinePassed();
        rs = _rounds[taskId];
        if (rs.phase != Phase.Commit) revert WrongPhase(Phase.Commit, rs.phase);
        if (round != rs.round) revert WrongRound(rs.round, round);
    }

    function _votePhase(uint256 taskId, uint256 round, bytes32 modelHash)
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
    }

    function _revealPhase(uint256 taskId, uint256 round, Participant[] calldata list)
        internal
        returns (Task storage t, RoundState storage rs)
    {
        t = _task(taskId);
        rs = _rounds[taskId];
        if (rs.phase != Phase.Revealing) revert WrongPhase(Phase.Revealing, rs.phase);
        if (round != rs.round) revert WrongRound(rs.round, round);
        if (block.timestamp > rs.deadline) revert WindowClosed();
        _checkList(rs, list);
        if (rs.scoreEpoch != rs.epoch) {
            rs.scoreEpoch = rs.epoch;
            rs.totalScore = 0;
        }
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

    function _commitSigned(
        Task storage t,
        RoundState storage rs,
        uint256 taskId,
        uint256 round,
        bytes32 supportHash,
        SignedSubmission[] calldata subs
    ) internal {
        uint256 len = subs.length;
        for (uint256 i; i < len; ++i) {
            SignedSubmission calldata s = subs[i];
            bytes32 digest = _hashTypedDataV4(
                keccak256(abi.encode(SUBMISSION_TYPEHASH, taskId, round, supportHash, s.ciphertextHash, s.commitment))
            );
            address signer = ECDSA.recover(digest, s.r, s.vs);
            _commit(t, rs, taskId, supportHash, s.ciphertextHash, s.commitment, signer);
        }
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
        Miner storage m = _miners[account];
        if (!m.registered) revert NotRegistered(account);
        if (m.unlockAt != 0) revert Unbonding(account);
        if (m.stake < minStake) revert InsufficientStake(account);
        MinerRound storage mrs = _minerRounds[taskId][account];
        MinerRound memory mr = mrs;
        uint32 epoch = rs.epoch;
        uint32 round = rs.round;
        if (mr.epoch == epoch) revert AlreadyCommitted(account);
        uint64 tag = uint64(uint256(commitment));
        if (mr.round == round && mr.commitTag == tag) revert SignatureReplayed(account);
        uint16 n = rs.participants;
        if (n == 0) rs.supportHash = supportHash;
        else if (rs.supportHash != supportHash) revert SupportMismatch();
        if (n >= MAX_PARTICIPANTS) revert TooManyParticipants();
        rs.participants = n + 1;
        rs.participantsHash = keccak256(abi.encode(rs.participantsHash, account, commitment));
        mrs.epoch = epoch;
        mrs.round = round;
        mrs.flags = COMMITTED;
        mrs.commitTag = tag;
        mrs.score = 0;
        emit Committed(taskId, round, account, epoch, supportHash, ciphertextHash, commitment);
    }

    function _vote(RoundState storage rs, uint256 taskId, address account, bool accept, uint256 accuracyBps) internal {
        MinerRound storage mrs = _minerRounds[taskId][account];
        uint8 flags = mrs.flags;
        if (mrs.epoch != rs.epoch || flags & COMMITTED == 0) revert NotParticipant(account);
        if (flags & VOTED != 0) revert AlreadyVoted(account);
        if (accuracyBps > BPS) revert AccuracyOutOfRange(accuracyBps);
        mrs.flags = flags | VOTED;
        uint16 idx = rs.votes;
        mapping(uint256 => uint256) storage acc = _accuracies[taskId];
        uint256 word = acc[idx >> 4];
        uint256 shift = (uint256(idx) & 15) << 4;
        acc[idx >> 4] = (word & ~(uint256(0xffff) << shift)) | (accuracyBps << shift);
        rs.votes = idx + 1;
        if (accept) rs.accepts += 1;
        emit Voted(taskId, rs.round, account, accept, uint16(accuracyBps));
    }

    function _reveal(
        Task storage t,
        RoundState storage rs,
        uint256 taskId,
        address account,
        bytes32 commitment,
        uint256 score,
        bytes32 nonce,
        bool strict
    ) internal {
        MinerRound storage mrs = _minerRounds[taskId][account];
        uint8 flags = mrs.flags;
        if (flags & (REVEALED | FAULT) != 0) revert AlreadyRevealed(account);
        uint32 round = rs.round;
        bool opens = keccak256(abi.encode(score, nonce, taskId, uint256(round), account)) == commitment;
        uint256 cap = _maxScore(t, rs);
        if (!opens || score > cap) {
            if (strict) {
                if (!opens) revert RevealMismatch(account);
                revert ScoreTooLarge(score, cap);
            }
            mrs.flags = flags | FAULT;
            rs.faults += 1;
            emit RevealInvalid(taskId, round, account, score);
            return;
        }
        mrs.flags = flags | REVEALED;
        mrs.score = uint112(score);
        rs.reveals += 1;
        rs.totalScore += uint128(score);
        emit Revealed(taskId, round, account, score);
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
        _credit(treasury, fee);
        _credit(t.aggregator, aggShare);
        _credit(t.publisher, minersPool - paid);
        emit RoundSettled(taskId, round, paid, fee, aggShare, minersPool - paid);
        _nextEpoch(rs, round + 1);
    }

    /// @dev Credit each valid revealer minersPool * score / total; slash everyone else.
    function _payMiners(uint256 taskId, uint32 round, Participant[] calldata list, uint256 minersPool, uint256 total)
        internal
        returns (uint256 paid)
    {
        uint256 len = list.length;
        for (uint256 i; i < len; ++i) {
            address account = list[i].miner;
            MinerRound storage mrs = _minerRounds[taskId][account];
            if (mrs.flags & REVEALED != 0) {
                uint256 amount = total == 0 ? 0 : (minersPool * mrs.score) / total;
                paid += amount;
                _credit(account, amount);
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
