"""The reliability and security suite: faults, crashes, herds, leaks, isolation, bad files."""
