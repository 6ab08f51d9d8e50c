// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {CardholderAccount} from "./CardholderAccount.sol";

/// @title SpenderModule
/// @notice Replica of the Gnosis Pay Spender module: an allowed relayer calls spend() at card
///         authorization time; the module moves `amount` of `asset` from the cardholder account to
///         `receiver` (the settlement account) and emits the real Spend event, whose four
///         parameters are all non-indexed (topic0 0xca8fbb9b...c28f, everything else in data).
contract SpenderModule {
    address public immutable owner;
    mapping(address => bool) public isRelayer;

    event Spend(address asset, address account, address receiver, uint256 amount);
    event RelayerSet(address indexed relayer, bool allowed);

    constructor() {
        owner = msg.sender;
    }

    function setRelayer(address relayer, bool allowed) public {
        require(msg.sender == owner, "SpenderModule: caller is not the owner");
        isRelayer[relayer] = allowed;
        emit RelayerSet(relayer, allowed);
    }

    function addRelayer(address relayer) external {
        setRelayer(relayer, true);
    }

    function spend(address asset, address account, address receiver, uint256 amount) external {
        require(isRelayer[msg.sender], "SpenderModule: caller is not a relayer");
        CardholderAccount(account).executeTransfer(asset, receiver, amount);
        emit Spend(asset, account, receiver, amount);
    }
}
