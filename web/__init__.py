"""The outermost layer: Omixa's HTTP surface and the composition root that runs it.

- :mod:`omixa.web.http`: the Quart-Trio application (the ``/api/v1`` routes, the dashboard,
  the OpenAPI document) and its ASGI wrappers. It translates HTTP to engine calls and back.
- This package's own modules compose and operate the process: :mod:`omixa.web.cli` (the
  ``omixa`` command), :mod:`omixa.web.server` (the process tree: storage, engine, Hypercorn),
  :mod:`omixa.web.demo` (``omixa demo``), :mod:`omixa.web.reload` (reloading the
  deployments on SIGHUP) and :mod:`omixa.web.deployments_file` (the CLI's edits of the
  deployments in the config file).
"""
