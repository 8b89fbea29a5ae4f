"""Hand-written helpers around the generated `comfymesh.v1` stubs: channels, servers, status codes."""

from comfymesh.rpc.channels import channel_options, open_channel
from comfymesh.rpc.server import start_server
from comfymesh.rpc.status_codes import UNAVAILABLE_CODES, is_unavailable

__all__ = ["UNAVAILABLE_CODES", "channel_options", "is_unavailable", "open_channel", "start_server"]
