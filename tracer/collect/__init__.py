"""Collectors: read live kernel state (optionally inside a network namespace) into plain data."""
