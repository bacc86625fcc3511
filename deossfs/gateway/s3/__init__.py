"""The S3 API of the gateway: SigV4 authentication and request bodies (issue #12)."""
