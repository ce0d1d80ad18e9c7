"""The HTTP layer: the Quart-Trio application, its routes and its ASGI wrappers.

:func:`omixa.web.http.app.create_app` builds the application over a running engine; routes
ask the engine (never storage) and render its answers and errors.
"""
