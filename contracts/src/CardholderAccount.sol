// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "./IERC20.sol";

/// @title CardholderAccount
/// @notice Stands in for the cardholder's Safe (plus its Roles module): it holds the tokens, has an
///         owner (the cardholder) and one enabled module (the spender module), which is the only
///         caller allowed to move funds out through executeTransfer.
contract CardholderAccount {
    address public immutable owner;
    address public module;

    /// Same signature as the Safe's event (log #6 of a real card spend).
    event ExecutionFromModuleSuccess(address indexed module);
    event ModuleChanged(address indexed previousModule, address indexed newModule);

    constructor(address owner_, address module_) {
        require(owner_ != address(0), "CardholderAccount: owner is the zero address");
        owner = owner_;
        module = module_;
        emit ModuleChanged(address(0), module_);
    }

    function setModule(address newModule) external {
        require(msg.sender == owner, "CardholderAccount: caller is not the owner");
        emit ModuleChanged(module, newModule);
        module = newModule;
    }

    function executeTransfer(address token, address to, uint256 amount) external {
        require(msg.sender == module, "CardholderAccount: caller is not the enabled module");
        require(IERC20(token).transfer(to, amount), "CardholderAccount: token transfer failed");
        emit ExecutionFromModuleSuccess(msg.sender);
    }
}
