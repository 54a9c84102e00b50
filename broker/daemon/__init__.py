"""The daemon's parts: server, API, logins, refresher, proxy, journal. Above providers, store and followed files."""
