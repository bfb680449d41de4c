"""Domain models and services: Tortoise models, ids, the device registry, the usage ledger."""
