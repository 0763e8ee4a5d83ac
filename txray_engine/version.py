"""Engine and store-format versions."""

__version__ = "0.1.0"

#: Version of the on-disk layout described in docs/FORMAT.md.
FORMAT_VERSION = 1
