"""The chat adapter: an echo assistant, or a hosted LLM streamed over HTTP.

Run it with ``python -m adapters.chat``; see ``adapters.chat.server.run``.
"""
