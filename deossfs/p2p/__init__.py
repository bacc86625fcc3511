"""Gateway <-> storage node transfers: signed requests, the node client, column transfer."""
