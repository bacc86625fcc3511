"""The storage node daemon: a durable fragment store behind cess-miner's HTTP API."""
