"""The application layer: what routes and transports call, and nothing else does."""
