"""Flux-driven rollouts: GitHub's webhook (``github``), what a push means for the Flux
objects (``plan``) and the sync records and reconcile requests (``service``)."""
