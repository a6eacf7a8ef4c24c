// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {IModelMine} from "./IModelMine.sol";

/// @title ModelMineBase — storage, network parameters, pull-payment balances
/// @notice Balances are pull payments: every reward, fee, aggregator share, refund and slash is credited
///         to `earned` and paid out only by `claim` (checks-effects-interactions + reentrancy guard).
///         `earned` and `withdrawn` only grow, so the slot never returns to zero (cheap re-credits).
abstract contract ModelMineBase is IModelMine, Ownable, Pausable, ReentrancyGuard {
    uint16 internal constant BPS = 10_000;
    uint16 internal constant MAX_PARTICIPANTS = 1024;
    uint8 internal constant COMMITTED = 1;
    uint8 internal constant REVEALED = 4;
    uint8 internal constant FAULT = 8;
    // Packed per (task, miner) word, reused across rounds:
    // epoch(32) | round(32) << 32 | flags(8) << 64 | commitTag(48) << 72 | score(64) << 120 | pending(72) << 184
    // `pending` accrues the miner's rewards in this task until `claimRewards` (saves a cold balance
    // write per miner per round); a credit that would overflow it goes to the address balance.
    uint256 internal constant ROUND_SHIFT = 32;
    uint256 internal constant FLAGS_SHIFT = 64;
    uint256 internal constant TAG_SHIFT = 72;
    uint256 internal constant TAG_MASK = (1 << 48) - 1;
    uint256 internal constant SCORE_SHIFT = 120;
    uint256 internal constant SCORE_MASK = (1 << 64) - 1;
    uint256 internal constant PENDING_SHIFT = 184;
    uint256 internal constant PENDING_MASK = (1 << 72) - 1;

    struct Balance {
        uint128 earned;
        uint128 withdrawn;
    }

    /// @notice Receives network fees and slashed stake.
    address public treasury;
    /// @notice Network fee in basis points, copied into each task at publish time.
    uint16 public feeBps;
    /// @notice Share of a miner's stake taken for a missing, mismatching or out-of-range reveal.
    uint16 public slashBps;
    /// @notice Seconds between `requestUnstake` and `withdrawStake`.
    uint32 public unbondingPeriod;
    /// @notice Minimum stake a miner needs to submit.
    uint128 public minStake;
    /// @notice Number of tasks published so far (task ids start at 1).
    uint256 public taskCount;

    mapping(uint256 taskId => Task) internal _tasks;
    mapping(uint256 taskId => RoundState) internal _rounds;
    mapping(uint256 taskId => bytes) internal _publisherKeys;
    mapping(uint256 taskId => bytes) internal _aggregatorKeys;
    mapping(uint256 taskId => mapping(address miner => uint256 packed)) internal _minerRounds;
    mapping(uint256 taskId => mapping(uint256 word => uint256)) internal _accuracies;
    mapping(uint256 taskId => mapping(uint256 word => uint256)) internal _voteBits;
    mapping(address miner => Miner) internal _miners;
    mapping(address miner => bytes) internal _minerKeys;
    mapping(address account => Balance) internal _balances;

    constructor(address owner_, address treasury_, uint16 feeBps_, uint128 minStake_, uint16 slashBps_, uint32 unbonding_)
        Ownable(owner_)
    {
        _setTreasury(treasury_);
        _setNetworkParams(feeBps_, minStake_, slashBps_, unbonding_);
    }

    // ------------------------------------------------------------------ admin

    /// @notice Change the treasury. Only the owner.
    function setTreasury(address treasury_) external onlyOwner {
        _setTreasury(treasury_);
    }

    /// @notice Change network parameters for future tasks (fee) and all miners (stake, slash, unbonding).
    function setNetworkParams(uint16 feeBps_, uint128 minStake_, uint16 slashBps_, uint32 unbonding_)
        external
        onlyOwner
    {
        _setNetworkParams(feeBps_, minStake_, slashBps_, unbonding_);
    }

    /// @notice Stop publishing, registration, commits, proposals, votes and finalization. Reveals,
    ///         settlement, claims and stake withdrawals stay open so that owed rewards can always be paid.
    function pause() external onlyOwner {
        _pause();
    }

    /// @notice Resume after `pause`.
    function unpause() external onlyOwner {
        _unpause();
    }

    // ------------------------------------------------------------------ balances

    /// @notice Pay the caller everything credited to its address balance (fees, aggregator shares,
    ///         refunds, overflowed rewards) and not yet withdrawn.
    /// @dev Effects (withdrawn = earned) before the transfer; nonReentrant on top.
    function claim() external nonReentrant returns (uint256 amount) {
        amount = _drainBalance(msg.sender);
        _pay(amount);
    }

    /// @notice Pay the caller its miner rewards pending in `taskIds` plus its address balance.
    function claimRewards(uint256[] calldata taskIds) external nonReentrant returns (uint256 amount) {
        amount = _drainBalance(msg.sender);
        uint256 len = taskIds.length;
        for (uint256 i; i < len; ++i) {
            mapping(address => uint256) storage mrs = _minerRounds[taskIds[i]];
            uint256 w = mrs[msg.sender];
            uint256 p = (w >> PENDING_SHIFT) & PENDING_MASK;
            if (p != 0) {
                mrs[msg.sender] = w & ~(PENDING_MASK << PENDING_SHIFT);
                amount += p;
            }
        }
        _pay(amount);
    }

    /// @notice Amount `account` can `claim` now from its address balance.
    function owed(address account) external view returns (uint256) {
        Balance storage b = _balances[account];
        return b.earned - b.withdrawn;
    }

    /// @notice Miner rewards of `account` pending in task `taskId` (claimed with `claimRewards`).
    function pendingRewards(uint256 taskId, address account) external view returns (uint256) {
        return (_minerRounds[taskId][account] >> PENDING_SHIFT) & PENDING_MASK;
    }

    /// @notice Lifetime credits and withdrawals of `account`.
    function balanceOf(address account) external view returns (uint128 earned, uint128 withdrawn) {
        Balance storage b = _balances[account];
        return (b.earned, b.withdrawn);
    }

    // ------------------------------------------------------------------ internals

    function _drainBalance(address account) internal returns (uint256 amount) {
        Balance storage b = _balances[account];
        amount = b.earned - b.withdrawn;
        if (amount != 0) b.withdrawn = b.earned;
    }

    /// @dev The interaction of `claim`/`claimRewards`: all effects happened before.
    function _pay(uint256 amount) internal {
        if (amount == 0) revert NothingToClaim();
        emit Claimed(msg.sender, amount);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    /// @dev Credit without a Credited event (the caller emits an event that carries the amount).
    function _creditQuiet(address account, uint256 amount) internal {
        if (amount != 0) _balances[account].earned += uint128(amount);
    }

    function _credit(address account, uint256 amount) internal {
        if (amount == 0) return;
        _balances[account].earned += uint128(amount);
        emit Credited(account, amount);
    }

    function _setTreasury(address treasury_) internal {
        if (treasury_ == address(0)) revert ZeroAddress();
        treasury = treasury_;
        emit TreasuryChanged(treasury_);
    }

    function _setNetworkParams(uint16 feeBps_, uint128 minStake_, uint16 slashBps_, uint32 unbonding_) internal {
        if (feeBps_ > BPS) revert InvalidParams("feeBps");
        if (slashBps_ > BPS) revert InvalidParams("slashBps");
        feeBps = feeBps_;
        minStake = minStake_;
        slashBps = slashBps_;
        unbondingPeriod = unbonding_;
        emit NetworkParamsChanged(feeBps_, minStake_, slashBps_, unbonding_);
    }

    function _isCompressedKey(bytes calldata key) internal pure returns (bool) {
        return key.length == 33 && (key[0] == 0x02 || key[0] == 0x03);
    }
}
