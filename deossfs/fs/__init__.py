"""The FUSE mount: buckets as directories, objects as files (pyfuse3 + trio)."""
