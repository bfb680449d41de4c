"""Clients of third-party services (SMS, WeChat), each behind an interface defined in models/."""
