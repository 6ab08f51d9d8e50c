// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "./IERC20.sol";

/// @title SettlementAccount
/// @notice The issuer's settlement account (0x4822...72EE on Gnosis Chain, a Safe): receives every
///         card spend and sends refunds, reversals and expired-authorization releases back as plain
///         ERC-20 transfers. refundBatch sends many of them in one transaction, as Gnosis Pay does
///         through MultiSend (one recorded batch carries 45 refunds). No custom events: the only
///         on-chain trace of a refund is the token's Transfer log.
contract SettlementAccount {
    address public immutable owner;

    constructor() {
        owner = msg.sender;
    }

    modifier onlyOwner() {
        require(msg.sender == owner, "SettlementAccount: caller is not the owner");
        _;
    }

    function refund(address token, address to, uint256 amount) external onlyOwner {
        _send(token, to, amount);
    }

    function refundBatch(address token, address[] calldata to, uint256[] calldata amounts)
        external
        onlyOwner
    {
        require(to.length == amounts.length, "SettlementAccount: length mismatch");
        for (uint256 i = 0; i < to.length; ++i) {
            _send(token, to[i], amounts[i]);
        }
    }

    function _send(address token, address to, uint256 amount) private {
        require(IERC20(token).transfer(to, amount), "SettlementAccount: token transfer failed");
    }
}
