"""Hand-written helpers around the generated `comfymesh.v1` stubs: channels, servers, failures."""

from comfymesh.rpc.channels import channel_options, open_channel
from comfymesh.rpc.failures import exception_from_failure, failure_from_exception
from comfymesh.rpc.server import start_server

__all__ = ["channel_options", "exception_from_failure", "failure_from_exception", "open_channel", "start_server"]
