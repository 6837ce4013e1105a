"""The HTTP face of aftercall: ``hypercorn -k trio web.app:app``.

The one module of ``web`` that names the layer above it: the entry point builds the app
around the composition root (``aftercall.system.run_system``), which reads the settings
and builds the whole system once Hypercorn's lifespan starts. Nothing is built at import
time. The app itself, its handlers and the wrong-worker check live in ``web.factory``.
"""

from __future__ import annotations

from aftercall.settings import SettingsError
from aftercall.system import run_system
from web.factory import TrioOnly, create_app

quart_app = create_app(run_system, quiet_errors=(SettingsError,), freeze_heap=True)
app = TrioOnly(quart_app, exit_on_failure=True)
