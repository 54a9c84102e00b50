"""The auth proxy: relays a tool's requests upstream with the credential added."""
