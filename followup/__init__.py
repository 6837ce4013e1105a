"""The follow-up: continuing a finished call on WhatsApp, the domain of aftercall.

``call_rules`` turns a finished ElevenLabs call into a fact; ``call_monitor`` finds calls by
polling batch calling; ``conversation`` holds the rules of a WhatsApp conversation as
plain functions over values; ``phone`` is the phone actor that folds a phone's stream,
asks the rules what to do, does it and records the outcome.
"""
