"""aftercall: continue ElevenLabs agent phone calls on WhatsApp.

This package is the composition root and the command line; the system's parts live in
``events/`` (the log), ``actors/`` (the phone actors and their clients), ``projections/``
(read models), ``web/`` (the HTTP app) and ``sandbox/`` (local stand-ins for ElevenLabs and
Twilio).
"""
