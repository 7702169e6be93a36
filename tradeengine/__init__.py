"""tradeengine: AI-assisted crypto trading, one codebase for the control plane and tenant runtimes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tradeengine")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
