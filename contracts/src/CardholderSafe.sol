// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title CardholderSafe
/// @notice Stands in for the cardholder's Safe (v1.3.0 on mainnet): it holds the tokens, has an
///         owner (the cardholder) and a set of enabled modules. On Gnosis Pay the enabled module
///         that spends is the cardholder's Roles module (here RolesModule), which calls
///         execTransactionFromModule to make the token transfer. Only plain calls (operation 0)
///         are supported; a failed call returns false and the Roles module bubbles its reason.
contract CardholderSafe {
    address public immutable owner;
    mapping(address => bool) public isModuleEnabled;

    /// Same signatures as the Safe's events (log #6 of a real card spend is the Success one).
    event ExecutionFromModuleSuccess(address indexed module);
    event ExecutionFromModuleFailure(address indexed module);
    event EnabledModule(address module);
    event DisabledModule(address module);

    constructor(address owner_) {
        require(owner_ != address(0), "CardholderSafe: owner is the zero address");
        owner = owner_;
    }

    function enableModule(address module) external {
        require(msg.sender == owner, "CardholderSafe: caller is not the owner");
        require(module != address(0), "CardholderSafe: module is the zero address");
        require(!isModuleEnabled[module], "CardholderSafe: module already enabled");
        isModuleEnabled[module] = true;
        emit EnabledModule(module);
    }

    function disableModule(address module) external {
        require(msg.sender == owner, "CardholderSafe: caller is not the owner");
        require(isModuleEnabled[module], "CardholderSafe: module not enabled");
        isModuleEnabled[module] = false;
        emit DisabledModule(module);
    }

    /// @notice The Safe's module entry point (ModuleManager.execTransactionFromModuleReturnData).
    function execTransactionFromModuleReturnData(
        address to,
        uint256 value,
        bytes calldata data,
        uint8 operation
    ) external returns (bool success, bytes memory returnData) {
        require(isModuleEnabled[msg.sender], "CardholderSafe: caller is not an enabled module");
        require(operation == 0, "CardholderSafe: only calls are supported");
        (success, returnData) = to.call{value: value}(data);
        if (success) {
            emit ExecutionFromModuleSuccess(msg.sender);
        } else {
            emit ExecutionFromModuleFailure(msg.sender);
        }
    }

    receive() external payable {}
}
