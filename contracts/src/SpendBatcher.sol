// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {SpenderModule} from "./SpenderModule.sol";

/// @title SpendBatcher
/// @notice Benchmark-only helper, not part of the Gnosis Pay surface: a relayer of the spender
///         module that makes many card spends in one transaction, so that a workload of 100,000
///         card events fits in a few minutes. Each spend is a real SpenderModule.spend call, so
///         the logs are exactly those of a single spend (the token Transfer(s), the Safe's
///         ExecutionFromModuleSuccess, the Roles module's ConsumeAllowance, the module's Spend),
///         repeated in order inside one receipt.
///         Only the owner (the deployer) can call it; the spender module's owner must enable
///         it as a module (enableModule), as the spender module only takes calls from enabled
///         modules.
contract SpendBatcher {
    bytes32 public constant SPENDING_ROLE = keccak256("SPENDING_ROLE");

    address public immutable owner;
    SpenderModule public immutable module;

    constructor(SpenderModule module_) {
        owner = msg.sender;
        module = module_;
    }

    /// @notice spend(assets[i], accounts[i], receiver, amounts[i], SPENDING_ROLE) for every i,
    ///         in order.
    ///         Reverts as a whole if any spend reverts.
    function spendBatch(
        address[] calldata assets,
        address[] calldata accounts,
        address receiver,
        uint256[] calldata amounts
    ) external {
        require(msg.sender == owner, "SpendBatcher: caller is not the owner");
        uint256 n = assets.length;
        require(
            accounts.length == n && amounts.length == n, "SpendBatcher: length mismatch"
        );
        for (uint256 i = 0; i < n; ++i) {
            module.spend(assets[i], accounts[i], receiver, amounts[i], SPENDING_ROLE);
        }
    }
}
