"""Virtual purifiers and the load-test CLI, built on protocol/."""
