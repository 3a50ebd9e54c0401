"""Back-end services the gateway routes to, one package (and process) each.

They share only ``adapters.base``: configuration, the mutual-TLS server
runner and the Backend servicer base class.
"""
