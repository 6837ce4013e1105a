"""Clients for the outside world: Twilio (WhatsApp) and ElevenLabs (the agent).

Each speaks one service's wire protocol and knows nothing of conversations: the follow-up
domain (``followup``) decides what to send, these send it. The lean HTTP/1.1 transport
(``clients.http1``) carries the Twilio requests.
"""
