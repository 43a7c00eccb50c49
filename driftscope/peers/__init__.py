"""Peers the benchmark measures driftscope against: code a user would otherwise run."""
