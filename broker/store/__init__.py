"""Durable copies of credentials: the OS keyring or an AES-256-GCM encrypted file."""
