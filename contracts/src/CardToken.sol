// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title CardToken
/// @notice Minimal ERC-20 standing in for the tokens a Gnosis Pay card spends: deployed once as an
///         EURe-like token (18 decimals) and once as a USDCe-like token (6 decimals).
///         Only the owner can mint; a mint is a Transfer from address(0), like a Monerium top-up,
///         and is seen on this token only.
///
///         As EURe it plays the Monerium v2 proxy (0x420C...3430): the owner sets, once, a v1
///         "frontend" (TokenFrontend, 0xcB44...C56E on mainnet), the only caller allowed to move
///         balances with transfer_withCaller. A transfer through the frontend therefore emits
///         this token's Transfer first, then the frontend's identical one, in the same transaction
///         (gnosis-pay-onchain.md section 1a). USDCe has no frontend.
contract CardToken {
    string public name;
    string public symbol;
    uint8 public immutable decimals;
    address public immutable owner;
    uint256 public totalSupply;
    /// The v1 frontend allowed to call transfer_withCaller (address(0): none).
    address public frontend;

    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
    event FrontendSet(address indexed frontend);

    constructor(string memory name_, string memory symbol_, uint8 decimals_) {
        name = name_;
        symbol = symbol_;
        decimals = decimals_;
        owner = msg.sender;
    }

    function mint(address to, uint256 amount) external {
        require(msg.sender == owner, "CardToken: caller is not the owner");
        require(to != address(0), "CardToken: mint to the zero address");
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    /// @notice Set the v1 frontend; once only (Monerium hard-codes its frontends).
    function setFrontend(address frontend_) external {
        require(msg.sender == owner, "CardToken: caller is not the owner");
        require(frontend == address(0), "CardToken: frontend already set");
        require(frontend_ != address(0), "CardToken: frontend is the zero address");
        frontend = frontend_;
        emit FrontendSet(frontend_);
    }

    /// @notice Monerium's controller entry point: move `amount` from `caller` (the frontend's
    ///         msg.sender) to `to`. Emits this token's Transfer; the frontend emits its own.
    function transfer_withCaller(address caller, address to, uint256 amount)
        external
        returns (bool)
    {
        require(
            frontend != address(0) && msg.sender == frontend,
            "CardToken: caller is not the frontend"
        );
        _transfer(caller, to, amount);
        return true;
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        _transfer(msg.sender, to, amount);
        return true;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        emit Approval(msg.sender, spender, amount);
        return true;
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            require(allowed >= amount, "CardToken: insufficient allowance");
            allowance[from][msg.sender] = allowed - amount;
        }
        _transfer(from, to, amount);
        return true;
    }

    function _transfer(address from, address to, uint256 amount) private {
        require(to != address(0), "CardToken: transfer to the zero address");
        uint256 fromBalance = balanceOf[from];
        require(fromBalance >= amount, "CardToken: transfer amount exceeds balance");
        unchecked {
            balanceOf[from] = fromBalance - amount;
        }
        balanceOf[to] += amount;
        emit Transfer(from, to, amount);
    }
}
