"""The one layer of operator actions that the CLI (`provisio …`) and the web console
(services/console) both call: audit-trail queries, dead letters, staff accounts.

Nothing here prints or reads the environment; errors are :class:`AdminError` with a
sentence for a person and an exit code for the CLI.
"""
