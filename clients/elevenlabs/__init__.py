"""ElevenLabs: the REST API (batch calling, conversations, outbound calls), and the agent
WebSocket in text mode (``protocol``: the frames as values; ``session``: the I/O)."""
