"""The device gateway: transports, sessions, metering in Redis, the ledger writer, the node."""
