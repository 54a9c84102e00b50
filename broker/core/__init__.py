"""The vocabulary every layer speaks: credentials, errors, clock, config, paths.

Imports nothing of broker."""
