// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "./IERC20.sol";
import {RolesModule} from "./RolesModule.sol";

/// @title SpenderModule
/// @notice Replica of the Gnosis Pay Spender module: an allowed relayer calls spend() at card
///         authorization time with `account` = the cardholder's Roles module. The module asks the
///         Roles module (execTransactionWithRole, SPENDING_ROLE) to have the Safe transfer
///         `amount` of `asset` to `receiver` (the settlement account), within the daily
///         allowance, then emits the real Spend event, whose four parameters are all non-indexed
///         (topic0 0xca8fbb9b...c28f, everything else in data). As on mainnet, Spend.account is
///         the Roles module, not the Safe that held the funds.
contract SpenderModule {
    bytes32 public constant SPENDING_ROLE = keccak256("SPENDING_ROLE");

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
        RolesModule(account).execTransactionWithRole(
            asset, 0, abi.encodeCall(IERC20.transfer, (receiver, amount)), 0, SPENDING_ROLE, true
        );
        emit Spend(asset, account, receiver, amount);
    }
}
