"""deossfs: mount the CESS decentralized object store as a local directory."""

import os

# numpy (used for buffer addresses, never for linear algebra) would start an OpenBLAS
# thread per core that spins after start-up: 2-4% of a 1 GiB put's or get's CPU here
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
