"""Local stand-ins for Azure and Kubernetes. Never deployed (see .funcignore)."""
