"""Generated protobuf and gRPC code for the turnout.v1 API (see protos/turnout/v1/*.proto)."""
