"""The check catalogue: one module per rule, `wrNNN_short_name.py`.

IDs are stable and never reused; a renamed or merged rule keeps its old ID in
`redirects.py`. Each module defines one `tracer.checks.Check` subclass whose
docstring has the sections `## What it checks`, `## Why it breaks forwarding`,
`## Example` and `## Fix` (docs/rules/<ID>.md is generated from it:
`python -m tracer.checks.docs`).
"""
