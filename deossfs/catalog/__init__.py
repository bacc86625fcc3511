"""The namespace the gateway's S3 API stands on (docs/s3-names.md): S3 keys and bucket
names mapped onto the mount's paths and the chain's names, and per owner a catalog of
objects kept in step with the mount through the bucket metadata object (`protocol`)."""
