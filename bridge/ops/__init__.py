"""What an operator reads and repairs: one connection's status (``status``), the fleet's
(``fleet_status``), and the webhook subscriptions with their health check (``subscriptions``).
Reads the stores and calls the clients; makes no sync decision."""
