"""Evaluation suites, their runner, and the fake servers that tests, evals and benchmarks share."""
