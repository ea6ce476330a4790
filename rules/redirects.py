"""Old rule ID → current rule ID, for rules that were renamed or merged.

IDs are never reused: an ID listed here stays retired. `--select`/`--ignore`
and `why-route rules ID` follow these redirects.
"""

REDIRECTS: dict[str, str] = {}
