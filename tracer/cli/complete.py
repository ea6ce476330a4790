"""Shell completion values (click's shell_complete callbacks): namespaces, rule IDs, lab variants and nodes.

Commands and options complete through click itself; see docs/completion.md. A callback never
fails: a completion that cannot be computed (no lab, no permission) offers nothing.
"""

from __future__ import annotations

from click.shell_completion import CompletionItem

from tracer.errors import WhyRouteError


def _matching(values, incomplete: str, prefix: str = "") -> list[CompletionItem]:
    return [CompletionItem(prefix + v) for v in sorted(set(values)) if v.startswith(incomplete)]


def namespaces(_ctx, _param, incomplete: str) -> list[CompletionItem]:
    """The names `ip netns list` shows: the files in /run/netns."""
    from tracer.netns import NETNS_RUN_DIR

    try:
        names = [p.name for p in NETNS_RUN_DIR.iterdir()]
    except OSError:
        return []
    return _matching(names, incomplete)


def _rule_ids() -> list[str]:
    from tracer.checks import engine

    return [check.id for check in engine.catalogue()]


def rule_id(_ctx, _param, incomplete: str) -> list[CompletionItem]:
    return _matching(_rule_ids(), incomplete.upper())


def rule_id_list(_ctx, _param, incomplete: str) -> list[CompletionItem]:
    """`--select WR001,WR0<TAB>`: the last ID of a comma-separated list."""
    done, _, last = incomplete.rpartition(",")
    head = f"{done}," if done else ""
    taken = set(done.upper().split(","))
    return _matching([i for i in _rule_ids() if i not in taken], last.upper(), head)


def variants(ctx, _param, incomplete: str) -> list[CompletionItem]:
    """The variants of the topology given on the line (default: the seed)."""
    from tracer.lab import topology

    try:
        topo = topology.load(ctx.params.get("topology"))
    except WhyRouteError:
        return []
    return _matching([v.name for v in topo.variants], incomplete)


def topologies(_ctx, _param, incomplete: str) -> list[CompletionItem]:
    from tracer.lab import topology

    return _matching(topology.bundled_names(), incomplete)


def nodes(ctx, _param, incomplete: str) -> list[CompletionItem]:
    """The nodes of the lab with the line's --prefix, else the seed topology's."""
    from tracer.lab import builder, topology

    names: list[str] = []
    try:
        state = builder.read_state(ctx.params.get("prefix") or "wr")
        names = list(state.nodes) if state is not None else []
    except (WhyRouteError, OSError, ValueError):
        names = []
    if not names:
        try:
            names = list(topology.load(None).node_names)
        except WhyRouteError:
            return []
    return _matching(names, incomplete)


def attach(command) -> None:
    """Give parameters their completion by name, unless they have one, so that commands get
    them without asking: every `--netns` (any command), and the lab's `--variant`, `NODE` and
    `TOPOLOGY` (`why-route lab …`); on `command` and its subcommands."""
    import click

    by_name = {"netns": namespaces}
    if command.name == "lab":
        by_name.update(variant=variants, node=nodes, topology=topologies)
    _attach(command, by_name, click.Group)


def _attach(command, by_name: dict, group_type) -> None:
    for param in command.params:
        wanted = by_name.get(param.name or "")
        if wanted is not None and getattr(param, "_custom_shell_complete", wanted) is None:
            param._custom_shell_complete = wanted  # click's slot for shell_complete=
    if isinstance(command, group_type):
        for sub in command.commands.values():
            _attach(sub, by_name, group_type)
