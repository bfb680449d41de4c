"""The REST API (aiohttp): thin routes over the models' services."""
