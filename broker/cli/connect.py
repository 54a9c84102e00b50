"""The one client a command uses, honouring ``broker --socket``."""

from broker.client import Client

TYPE_CHECKING = False  # broker token runs without argparse
if TYPE_CHECKING:
    import argparse


def client(args: "argparse.Namespace", timeout: float = 60.0) -> Client:
    return Client(getattr(args, "socket", None), timeout=timeout)
