"""Benchmarks of vmss-node-patcher against the sandbox: ``make bench`` (``python -m bench``).

Each measure is a ratio against a baseline taken in the same run (see ``bench/README.md``).
"""
