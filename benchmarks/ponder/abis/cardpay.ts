// The two events the benchmark indexes, as in contracts/artifacts/{SpenderModule,CardToken}.json.

// Spend(address asset, address account, address receiver, uint256 amount): no indexed
// parameters, topic0 0xca8fbb9b...c28f (the real Gnosis Pay Spender module event).
export const SpenderModuleAbi = [
  {
    type: "event",
    name: "Spend",
    anonymous: false,
    inputs: [
      { name: "asset", type: "address", indexed: false },
      { name: "account", type: "address", indexed: false },
      { name: "receiver", type: "address", indexed: false },
      { name: "amount", type: "uint256", indexed: false },
    ],
  },
] as const;

// ERC-20 Transfer(address indexed from, address indexed to, uint256 value).
export const CardTokenAbi = [
  {
    type: "event",
    name: "Transfer",
    anonymous: false,
    inputs: [
      { name: "from", type: "address", indexed: true },
      { name: "to", type: "address", indexed: true },
      { name: "value", type: "uint256", indexed: false },
    ],
  },
] as const;
