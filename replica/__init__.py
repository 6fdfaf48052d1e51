"""The replica process: hosts one backend and serves turnout.v1.ReplicaService over gRPC."""
