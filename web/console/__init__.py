"""The operator console: every conversation, live, in the browser, under ``/console``.

Server-rendered HTML (Jinja2, autoescaped), a little hand-written JavaScript for live
updates (Server-Sent Events) and nothing to build. The modules:

- ``accounts``: operator accounts, sign-in with argon2 hashes, throttling and locks,
  sessions and their CSRF tokens (the hashes live beside the log, never in it);
- ``views``: the blueprint (``/console/...``): pages, actions, the access rules;
- ``forms``: the strict reading of the console's form posts;
- ``live``: one reader of the log's tail per process, waking the open conversation pages;
- ``render``: values the templates show (times, durations, Twilio errors, the SVG chart).

Nothing is imported here, so ``web.context`` can name ``accounts`` without importing the
blueprint (which imports ``web.context``).
"""
