"""The chain: one interface (`ChainClient`), an embedded ledger, the real CESS backend."""
