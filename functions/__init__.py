"""Thin trigger handlers: parse and validate the input, hand off to ``shared``."""
