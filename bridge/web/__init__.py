"""The web process: the webhook receiver with ``/healthz`` and ``/metrics`` (``app``), who may read
the metrics (``metrics``), each connection's receiver (``fleet``) and the ServiceM8 add-on's
activation pages (``activation``). Imports the other wings; nothing imports it but the CLI."""
