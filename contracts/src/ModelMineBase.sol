// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {IModelMine} from "./IModelMine.sol";

/// @title ModelMineBase — storage, bounded network parameters, pull-payment balances
/// @notice Balances are pull payments: every reward, fee, aggregator share, refund and slash is credited
///         and paid out only by `claim`/`claimRewards` (checks-effects-interactions + reentrancy guard).
///         Network parameters are bounded; fee, slash and minimum stake are copied into each task at
///         publish, so an owner change applies to new tasks only.
abstract contract ModelMineBase is IModelMine, Ownable, Pausable, ReentrancyGuard {
    uint16 internal constant BPS = 10_000;
    uint16 internal constant MAX_PARTICIPANTS = 1024;
    // ---- bounds (every parameter has one)
    uint16 public constant MAX_FEE_BPS = 1_000;
    uint16 public constant MAX_SLASH_BPS = 5_000;
    uint128 public constant MAX_MIN_STAKE = 1_000 ether;
    uint32 public constant MAX_UNBONDING = 30 days;
    uint32 public constant MIN_WINDOW = 60;
    uint32 public constant MAX_WINDOW = 30 days;
    uint32 public constant MAX_ROUNDS = 10_000;
    uint64 public constant MAX_TASK_DURATION = 365 days;
    uint16 public constant MAX_AGGREGATOR_SHARE_BPS = 3_000;
    uint16 public constant MAX_VOTER_SHARE_BPS = 5_000;
    uint16 public constant MIN_QUORUM_BPS = 5_000;
    uint64 public constant MAX_CLIP_MICROS = 1e12;
    uint8 public constant MAX_SECAGG_BACKEND = 3;
    uint8 public constant MAX_SUPPORT_MODE = 1;

    // ---- per (task, miner) word: attempt(32) | flags(8) << 32 | score(64) << 40 | pending(96) << 104
    uint8 internal constant COMMITTED = 1;
    uint8 internal constant REVEALED = 4;
    uint8 internal constant FAULT = 8;
    uint8 internal constant OPEN = 16;
    uint256 internal constant FLAGS_SHIFT = 32;
    uint256 internal constant SCORE_SHIFT = 40;
    uint256 internal constant SCORE_MASK = (1 << 64) - 1;
    uint256 internal constant PENDING_SHIFT = 104;
    uint256 internal constant PENDING_MASK = (1 << 96) - 1;

    struct Balance {
        uint128 earned;
        uint128 withdrawn;
    }

    /// @notice Receives network fees and slashed stake.
    address public treasury;
    /// @notice Network fee in basis points, copied into each task at publish time.
    uint16 public feeBps;
    /// @notice Share of a miner's stake taken for a missing or invalid reveal (copied into each task).
    uint16 public slashBps;
    /// @notice Seconds between `requestUnstake` and `withdrawStake` (fixed per request).
    uint32 public unbondingPeriod;
    /// @notice Minimum stake a miner needs to commit (copied into each task).
    uint128 public minStake;
    /// @notice Number of tasks published so far (task ids start at 1).
    uint256 public taskCount;
    /// @notice Number of miners ever registered (miner indices start at 1).
    uint32 public minerCount;

    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    uint256 private immutable _cachedChainId;
    bytes32 private immutable _cachedDomainSeparator;

    mapping(uint256 taskId => Task) internal _tasks;
    mapping(uint256 taskId => RoundState) internal _rounds;
    mapping(uint256 taskId => bytes) internal _publisherKeys;
    mapping(uint256 taskId => bytes) internal _aggregatorKeys;
    mapping(uint256 taskId => mapping(address miner => uint256 packed)) internal _minerRounds;
    mapping(uint256 taskId => mapping(uint256 word => uint256)) internal _accuracies;
    mapping(uint256 taskId => mapping(uint256 word => uint256)) internal _voteBits;
    mapping(uint256 taskId => mapping(uint256 word => uint256)) internal _selectBits;
    mapping(address miner => Miner) internal _miners;
    mapping(uint32 index => address miner) internal _minerAt;
    mapping(address miner => bytes) internal _minerKeys;
    mapping(address miner => uint256) internal _registrationNonces;
    mapping(address account => Balance) internal _balances;

    constructor(address owner_, address treasury_, uint16 feeBps_, uint128 minStake_, uint16 slashBps_, uint32 unbonding_)
        Ownable(owner_)
    {
        _cachedChainId = block.chainid;
        _cachedDomainSeparator = _buildDomainSeparator();
        _setTreasury(treasury_);
        _setNetworkParams(feeBps_, minStake_, slashBps_, unbonding_);
    }

    // ------------------------------------------------------------------ admin

    /// @notice Change the treasury. Only the owner.
    function setTreasury(address treasury_) external onlyOwner {
        _setTreasury(treasury_);
    }

    /// @notice Change the network parameters (bounded). Fee, slash and minimum stake apply to tasks
    ///         published afterwards; the unbonding period to unstake requests made afterwards.
    function setNetworkParams(uint16 feeBps_, uint128 minStake_, uint16 slashBps_, uint32 unbonding_)
        external
        onlyOwner
    {
        _setNetworkParams(feeBps_, minStake_, slashBps_, unbonding_);
    }

    /// @notice Stop new work: publishing, registration and opening rounds. Rounds already open keep
    ///         running (commit, propose, vote, reveal, finalize, settle, expire), and claims and stake
    ///         withdrawals stay open, so a pause cannot trap or confiscate anything.
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

    // ------------------------------------------------------------------ EIP-712

    /// @notice The EIP-712 domain separator: ("ModelMine", "1", chainid, this contract).
    function domainSeparator() public view returns (bytes32) {
        return block.chainid == _cachedChainId ? _cachedDomainSeparator : _buildDomainSeparator();
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, keccak256("ModelMine"), keccak256("1"), block.chainid, address(this)));
    }

    /// @dev keccak256("\x19\x01" || domainSeparator || structHash), as OpenZeppelin's EIP712._hashTypedDataV4.
    function _hashTypedDataV4(bytes32 structHash) internal view returns (bytes32 digest) {
        bytes32 sep = domainSeparator();
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, hex"1901")
            mstore(add(ptr, 0x02), sep)
            mstore(add(ptr, 0x22), structHash)
            digest := keccak256(ptr, 0x42)
        }
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
        if (feeBps_ > MAX_FEE_BPS) revert InvalidParams("feeBps");
        if (slashBps_ > MAX_SLASH_BPS) revert InvalidParams("slashBps");
        if (minStake_ > MAX_MIN_STAKE) revert InvalidParams("minStake");
        if (unbonding_ > MAX_UNBONDING) revert InvalidParams("unbondingPeriod");
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
