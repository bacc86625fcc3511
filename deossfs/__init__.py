"""deossfs: mount the CESS decentralized object store as a local directory."""

__version__ = "0.1.0"
