"""A process's wiring: the runtime built per connection from its settings (``runtime``) and
``run``'s supervisor of worker, beat and web (``supervisor``)."""
