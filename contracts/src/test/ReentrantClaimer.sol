// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IModelMine} from "../IModelMine.sol";

interface IModelMineActions {
    function publishTask(IModelMine.TaskParams calldata p) external payable returns (uint256);
    function cancelTask(uint256 taskId) external;
    function claim() external returns (uint256);
}

/// @notice Test-only attacker: publishes and cancels a task to be owed a refund, then re-enters
///         `claim` from its receive hook. Used to prove the reentrancy guard and CEI hold.
contract ReentrantClaimer {
    IModelMineActions public immutable target;
    uint256 public reentries;
    bool public reentrySucceeded;

    constructor(address target_) {
        target = IModelMineActions(target_);
    }

    function publishAndCancel(IModelMine.TaskParams calldata p) external payable returns (uint256 taskId) {
        taskId = target.publishTask{value: msg.value}(p);
        target.cancelTask(taskId);
    }

    function attack() external {
        target.claim();
    }

    receive() external payable {
        reentries += 1;
        try target.claim() {
            reentrySucceeded = true;
        } catch {}
    }
}
