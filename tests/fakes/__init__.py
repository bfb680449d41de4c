"""Faithful local fakes of third-party HTTP APIs we cannot reach in tests (SMS, WeChat)."""
