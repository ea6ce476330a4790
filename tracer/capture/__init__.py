"""Captures and post-mortem of TCP connections: `why-route capture` and `why-route postmortem`."""
