// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {CardholderSafe} from "./CardholderSafe.sol";

/// @title RolesModule
/// @notice Replica of the cardholder's Zodiac Roles v2 module as Gnosis Pay configures it
///         (gnosis-pay-onchain.md section 2, "Per-user Safe topology"): the spender module holds
///         SPENDING_ROLE, and the role may only call transfer(settlement account, amount) on a
///         scoped token, within a daily allowance. execTransactionWithRole checks the call and
///         the allowance, has the Safe (the avatar) make the transfer, then emits the real
///         ConsumeAllowance(bytes32 allowanceKey, uint128 consumed, uint128 newBalance) with
///         allowanceKey = keccak256("SPENDING_ALLOWANCE") and no indexed parameter (topic0
///         0x90355d54...af65). A card spend's Spend.account is this module, not the Safe.
///
///         Difference from Zodiac: the real module keys allowances by bytes32 only, and a Gnosis
///         Pay Safe has one scoped token. Cardholders here hold two tokens of different decimals,
///         so each scoped token has its own allowance (in its own base units); all of them are
///         reported under the same SPENDING_ALLOWANCE key.
contract RolesModule {
    bytes32 public constant SPENDING_ROLE = keccak256("SPENDING_ROLE");
    bytes32 public constant SPENDING_ALLOWANCE = keccak256("SPENDING_ALLOWANCE");
    bytes4 private constant TRANSFER_SELECTOR = bytes4(keccak256("transfer(address,uint256)"));

    /// Zodiac's Allowance layout: `refill` is added every `period` seconds up to `maxRefill`.
    struct Allowance {
        uint128 refill;
        uint128 maxRefill;
        uint64 period;
        uint128 balance;
        uint64 timestamp;
    }

    /// Can assign roles and set allowances (on mainnet: the Safe itself, through a Bouncer).
    address public immutable owner;
    /// The Safe the module executes through (Zodiac's avatar and target).
    CardholderSafe public immutable avatar;
    /// The only recipient transfer() may name: the settlement account.
    address public immutable recipient;

    mapping(bytes32 => mapping(address => bool)) public hasRole;
    mapping(address => bool) public isScoped;
    mapping(address => Allowance) public allowances;

    event AssignRoles(address module, bytes32[] roleKeys, bool[] memberOf);
    event SetAllowance(
        bytes32 allowanceKey,
        uint128 balance,
        uint128 maxRefill,
        uint128 refill,
        uint64 period,
        uint64 timestamp
    );
    event ConsumeAllowance(bytes32 allowanceKey, uint128 consumed, uint128 newBalance);

    constructor(address owner_, CardholderSafe avatar_, address recipient_) {
        require(owner_ != address(0), "RolesModule: owner is the zero address");
        require(address(avatar_) != address(0), "RolesModule: avatar is the zero address");
        require(recipient_ != address(0), "RolesModule: recipient is the zero address");
        owner = owner_;
        avatar = avatar_;
        recipient = recipient_;
    }

    modifier onlyOwner() {
        require(msg.sender == owner, "RolesModule: caller is not the owner");
        _;
    }

    /// Zodiac's name for the contract the module calls into (the avatar, as Gnosis Pay sets up).
    function target() external view returns (address) {
        return address(avatar);
    }

    function assignRoles(address module, bytes32[] calldata roleKeys, bool[] calldata memberOf)
        external
        onlyOwner
    {
        require(roleKeys.length == memberOf.length, "RolesModule: length mismatch");
        for (uint256 i = 0; i < roleKeys.length; ++i) {
            hasRole[roleKeys[i]][module] = memberOf[i];
        }
        emit AssignRoles(module, roleKeys, memberOf);
    }

    /// @notice Scope `token` for SPENDING_ROLE and set its allowance (Zodiac's setAllowance, with
    ///         the token in place of the key). `timestamp` 0 means now. A daily limit L is
    ///         (L, L, L, 1 days, 0).
    function setAllowance(
        address token,
        uint128 balance,
        uint128 maxRefill,
        uint128 refill,
        uint64 period,
        uint64 timestamp
    ) external onlyOwner {
        require(token != address(0), "RolesModule: token is the zero address");
        uint64 start = timestamp > 0 ? timestamp : uint64(block.timestamp);
        isScoped[token] = true;
        allowances[token] = Allowance(refill, maxRefill, period, balance, start);
        emit SetAllowance(SPENDING_ALLOWANCE, balance, maxRefill, refill, period, start);
    }

    /// @notice What is left of `token`'s allowance now, refills included.
    function accruedAllowance(address token)
        public
        view
        returns (uint128 balance, uint64 timestamp)
    {
        Allowance memory a = allowances[token];
        if (a.period == 0 || block.timestamp < uint256(a.timestamp) + a.period) {
            return (a.balance, a.timestamp);
        }
        uint64 elapsed = uint64((block.timestamp - a.timestamp) / a.period);
        if (a.balance < a.maxRefill) {
            uint256 refilled = uint256(a.balance) + uint256(a.refill) * elapsed;
            balance = refilled < a.maxRefill ? uint128(refilled) : a.maxRefill;
        } else {
            balance = a.balance;
        }
        timestamp = a.timestamp + elapsed * a.period;
    }

    /// @notice The Roles entry point the spender module calls: `data` must be
    ///         transfer(recipient, amount) on a scoped token, within that token's allowance.
    ///         The allowance is consumed only when the Safe's transfer succeeds; a failed
    ///         transfer reverts with the token's reason (or returns false if !shouldRevert).
    function execTransactionWithRole(
        address to,
        uint256 value,
        bytes calldata data,
        uint8 operation,
        bytes32 roleKey,
        bool shouldRevert
    ) external returns (bool) {
        uint256 amount = _authorize(to, value, data, operation, roleKey);
        if (!_execute(to, data, shouldRevert)) {
            return false;
        }
        _consume(to, amount);
        return true;
    }

    function _authorize(
        address to,
        uint256 value,
        bytes calldata data,
        uint8 operation,
        bytes32 roleKey
    ) private view returns (uint256 amount) {
        require(
            roleKey == SPENDING_ROLE && hasRole[roleKey][msg.sender],
            "RolesModule: caller does not have the spending role"
        );
        require(isScoped[to], "RolesModule: token not scoped");
        require(value == 0 && operation == 0, "RolesModule: only plain calls are allowed");
        require(
            data.length == 68 && bytes4(data[:4]) == TRANSFER_SELECTOR,
            "RolesModule: only transfer(address,uint256) is allowed"
        );
        address transferTo;
        (transferTo, amount) = abi.decode(data[4:], (address, uint256));
        require(transferTo == recipient, "RolesModule: recipient not allowed");
        (uint128 available,) = accruedAllowance(to);
        require(amount <= available, "RolesModule: amount exceeds the daily allowance");
    }

    function _execute(address to, bytes calldata data, bool shouldRevert) private returns (bool) {
        (bool ok, bytes memory returnData) =
            avatar.execTransactionFromModuleReturnData(to, 0, data, 0);
        if (ok && returnData.length > 0 && !abi.decode(returnData, (bool))) {
            ok = false; // the token returned false
            returnData = "";
        }
        if (ok || !shouldRevert) {
            return ok;
        }
        if (returnData.length > 0) {
            assembly {
                revert(add(returnData, 32), mload(returnData))
            }
        }
        revert("RolesModule: module transaction failed");
    }

    function _consume(address token, uint256 amount) private {
        (uint128 available, uint64 timestamp) = accruedAllowance(token);
        uint128 newBalance = available - uint128(amount);
        Allowance storage a = allowances[token];
        a.balance = newBalance;
        a.timestamp = timestamp;
        emit ConsumeAllowance(SPENDING_ALLOWANCE, uint128(amount), newBalance);
    }
}
