// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "./IERC20.sol";
import {RolesModule} from "./RolesModule.sol";

/// @title SpenderModule
/// @notice Replica of the Gnosis Pay Spender module (gnosispay/account-kit Spender.sol, a Zodiac
///         Modifier) with mainnet's call shape: spend(asset, account, receiver, amount, roleKey),
///         selector 0x8a320255, callable only by an ENABLED MODULE of this contract (Zodiac's
///         moduleOnly; enableModule / disableModule / isModuleEnabled / getModulesPaginated over
///         the same SENTINEL-linked list, same events and custom errors). `account` is the
///         cardholder's Roles module; the module asks it (execTransactionWithRole with the given
///         roleKey, which the Roles module checks is SPENDING_ROLE) to have the Safe transfer
///         `amount` of `asset` to `receiver` (the settlement account), within the daily
///         allowance, then emits the real Spend event, whose four parameters are all non-indexed
///         (topic0 0xca8fbb9b...c28f, everything else in data).
///
///         Simpler than mainnet (contracts/README.md, "Differences from mainnet"): the real module
///         executes through its avatar, the Spender Safe, which holds SPENDING_ROLE on every Roles
///         module; here the module calls the Roles module itself and holds the role. The real
///         moduleOnly also accepts a call from anyone carrying an appended salt and an EIP-712
///         signature by an enabled module (emitting HashExecuted); this replica has no signature
///         path: only a direct call from an enabled module passes, which is what an Anvil fork
///         does by impersonating an enabled module.
contract SpenderModule {
    bytes32 public constant SPENDING_ROLE = keccak256("SPENDING_ROLE");
    address internal constant SENTINEL_MODULES = address(0x1);

    address public immutable owner;
    /// Zodiac's linked list of enabled modules: SENTINEL -> newest -> ... -> oldest -> SENTINEL.
    /// An empty slot for SENTINEL means an empty list (the list is started lazily, so a copy of
    /// this contract moved with anvil_setCode before any module is enabled works as well).
    mapping(address => address) internal modules;

    event Spend(address asset, address account, address receiver, uint256 amount);
    event EnabledModule(address module);
    event DisabledModule(address module);

    error NotAuthorized(address sender);
    error InvalidModule(address module);
    error AlreadyEnabledModule(address module);
    error AlreadyDisabledModule(address module);
    error InvalidPageSize();

    constructor() {
        owner = msg.sender;
    }

    modifier onlyOwner() {
        require(msg.sender == owner, "SpenderModule: caller is not the owner");
        _;
    }

    /// Zodiac's moduleOnly without the signature path (see the contract's notice).
    modifier moduleOnly() {
        if (!isModuleEnabled(msg.sender)) {
            revert NotAuthorized(msg.sender);
        }
        _;
    }

    function enableModule(address module) external onlyOwner {
        if (module == address(0) || module == SENTINEL_MODULES) {
            revert InvalidModule(module);
        }
        if (modules[module] != address(0)) {
            revert AlreadyEnabledModule(module);
        }
        address head = modules[SENTINEL_MODULES];
        modules[module] = head == address(0) ? SENTINEL_MODULES : head;
        modules[SENTINEL_MODULES] = module;
        emit EnabledModule(module);
    }

    /// Zodiac's signature: `prevModule` is the module pointing to `module` in the list
    /// (SENTINEL for the first).
    function disableModule(address prevModule, address module) external onlyOwner {
        if (module == address(0) || module == SENTINEL_MODULES) {
            revert InvalidModule(module);
        }
        if (modules[prevModule] != module) {
            revert AlreadyDisabledModule(module);
        }
        modules[prevModule] = modules[module];
        modules[module] = address(0);
        emit DisabledModule(module);
    }

    function isModuleEnabled(address module) public view returns (bool) {
        return module != SENTINEL_MODULES && modules[module] != address(0);
    }

    /// Up to `pageSize` enabled modules after `start` (SENTINEL: from the first, the newest
    /// enabled); `next` is SENTINEL when the list ends within the page, else the last one
    /// returned (pass it as the next `start`).
    function getModulesPaginated(address start, uint256 pageSize)
        external
        view
        returns (address[] memory array, address next)
    {
        if (start != SENTINEL_MODULES && !isModuleEnabled(start)) {
            revert InvalidModule(start);
        }
        if (pageSize == 0) {
            revert InvalidPageSize();
        }
        array = new address[](pageSize);
        uint256 count = 0;
        next = modules[start];
        while (next != address(0) && next != SENTINEL_MODULES && count < pageSize) {
            array[count] = next;
            next = modules[next];
            count++;
        }
        if (next == address(0)) {
            next = SENTINEL_MODULES; // the list was never started
        } else if (next != SENTINEL_MODULES) {
            next = array[count - 1];
        }
        assembly {
            mstore(array, count)
        }
    }

    function spend(address asset, address account, address receiver, uint256 amount, bytes32 roleKey)
        external
        moduleOnly
    {
        RolesModule(account).execTransactionWithRole(
            asset, 0, abi.encodeCall(IERC20.transfer, (receiver, amount)), 0, roleKey, true
        );
        emit Spend(asset, account, receiver, amount);
    }
}
