"""Errors the Twilio stand-in raises at whoever drives it (not Twilio's own API errors).

Kept apart from ``_standin`` because the control API in ``_server`` turns them into answers,
and ``_server`` must not import the module that builds it.
"""

from __future__ import annotations


class NotServing(RuntimeError):
    """The stand-in was asked to make a request before ``serve_twilio`` started it."""


class NoWebhookUrl(RuntimeError):
    """A simulated user spoke, but nobody told the stand-in where the app listens."""
