"""The pure domain of the bridge, by subject:

- ``facts``: what the bridge keeps of ServiceM8 records; ``state``: what it holds of a linked job;
- ``presence``: both sides reduced to absent / assigned / scheduled / finished;
- ``decision``: the conflict rule alone (push, pull, in step);
- ``planners``: the writes that carry a decision out; ``plan``: a whole job's sync as data;
- ``jobfields``: the Coredination job's title, description, place and time;
- ``transitions``: how a record changes when the bridge learns or writes something;
- ``ids``: derived ids; ``stamps``: time and flag formats; ``webhooks``: hints and their decoding.

Nothing in this package performs I/O or knows either API's wire models. It must not import
``requests``, ``redis``, ``celery`` or anything under ``bridge`` or ``tasks``; those depend on it,
never the other way round.
"""
