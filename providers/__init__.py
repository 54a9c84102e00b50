"""Providers: what is specific to each LLM service, declared as data first.

A provider turns a login or a refresh into a ``broker.model.Credential`` using the
grants in ``flows``; it knows nothing of the socket server.
"""
