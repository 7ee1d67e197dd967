"""The servers: HTTP and gRPC transports over one Service and Batcher (imported only by `serve`)."""
