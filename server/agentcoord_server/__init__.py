"""agentcoord server: a gRPC coordination server for fleets of AI agents, backed by Redis."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agentcoord")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
