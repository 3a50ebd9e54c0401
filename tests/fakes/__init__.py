"""Fakes of external services, each speaking the service's real wire protocol."""
