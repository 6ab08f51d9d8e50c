// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @notice The part of CardToken (the v2 token) the frontend calls.
interface ICardTokenController {
    function decimals() external view returns (uint8);
    function totalSupply() external view returns (uint256);
    function balanceOf(address account) external view returns (uint256);
    function transfer_withCaller(address caller, address to, uint256 amount)
        external
        returns (bool);
}

/// @title TokenFrontend
/// @notice Replica of the Monerium EURe v1 "frontend" (0xcB44...C56E on Gnosis Chain), which since
///         2024-08-25 has the v2 proxy (0x420C...3430) as its controller. It holds no balances:
///         transfer() moves the balance on the v2 token with transfer_withCaller (the v2 token
///         emits its Transfer), then emits its own identical Transfer. One transfer through the
///         frontend is therefore two identical Transfer logs in one transaction, v2's first, as
///         in the recorded card spends and refunds (gnosis-pay-onchain.md section 1a). Mints and
///         burns happen on the v2 token only and emit nothing here.
contract TokenFrontend {
    string public name;
    string public symbol;
    ICardTokenController public immutable controller;

    event Transfer(address indexed from, address indexed to, uint256 value);

    constructor(string memory name_, string memory symbol_, ICardTokenController controller_) {
        require(address(controller_) != address(0), "TokenFrontend: controller is the zero address");
        name = name_;
        symbol = symbol_;
        controller = controller_;
    }

    /// Monerium's frontend exposes its controller under this name.
    function getController() external view returns (address) {
        return address(controller);
    }

    function decimals() external view returns (uint8) {
        return controller.decimals();
    }

    function totalSupply() external view returns (uint256) {
        return controller.totalSupply();
    }

    function balanceOf(address account) external view returns (uint256) {
        return controller.balanceOf(account);
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        require(
            controller.transfer_withCaller(msg.sender, to, amount),
            "TokenFrontend: controller transfer failed"
        );
        emit Transfer(msg.sender, to, amount);
        return true;
    }
}
