"""The public gRPC surface: ``dialog.v1.Gateway``, health and reflection."""
