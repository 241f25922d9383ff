"""Benchmark suites, runner and report writer."""
