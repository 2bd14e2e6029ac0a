"""``vmss-patcher``: the operator's command line for the patcher's HTTP API.

An operator tool, never deployed with the app (``.funcignore`` lets in only the app's own
files): it talks to ``/api/...`` over HTTPS like any other client, with a function key or
an Entra ID token, and imports nothing of ``shared/``.
"""
