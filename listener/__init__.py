"""Chain to commands: JSON-RPC client, range planning, log decoding, classification, cursor."""
