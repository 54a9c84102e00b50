"""Test doubles that speak real protocols (see ``oauth_server``)."""
