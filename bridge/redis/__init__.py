"""Where Redis comes from: ``REDIS_URL`` or a Sentinel group into clients, Celery's broker and
beat settings (``conn``), and the one embedded server of a state folder (``server``)."""
