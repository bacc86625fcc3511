"""The HTTP gateway: S3-compatible access to the store."""
