"""Nanochat-Lite: a one-process chat server for small language models on a CPU."""

__version__ = "0.1.0"
