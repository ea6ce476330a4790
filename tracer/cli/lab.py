"""`why-route lab …` commands (thin: parse, call tracer.lab, print)."""

import click

PREFIX_OPTION = click.option("--prefix", default="wr", show_default=True, metavar="P",
                             help="Namespaces are named P-NODE; labs with different prefixes coexist.")


@click.group()
def lab():
    """Build the seed network (or your own topology) in network namespaces."""


@lab.command("up")
@click.argument("topology", required=False, metavar="[TOPOLOGY]")
@click.option("--variant", metavar="NAME", help="Variant of the topology to apply (seed: slow by default).")
@PREFIX_OPTION
@click.option("--replace", is_flag=True,
              help="Tear down a lab with the same prefix (and namespaces with its names) first; without it, "
                   "lab up refuses.")
def up_command(topology, variant, prefix, replace):
    """Build TOPOLOGY (bundled name or path to a .toml; default: seed).

    Refuses if a lab with the same prefix exists (`lab list` shows them), unless --replace.
    """
    from tracer.lab import builder

    state = builder.up(topology, variant, prefix, replace=replace)
    click.echo(f"lab {state.prefix} up in {state.seconds:.2f} s: topology {state.topology}, variant {state.variant}")
    click.echo("nodes: " + ", ".join(f"{node} ({ns})" for node, ns in state.nodes.items()))
    for failure in state.failures:
        click.echo(_failure_text(failure), err=True)
    if state.failures:
        click.echo(f"{len(state.failures)} variant command(s) failed, as they would have for the author; "
                   f"recorded (`why-route lab status --prefix {state.prefix}`)")


@lab.command("down")
@PREFIX_OPTION
def down_command(prefix):
    """Remove the lab (also a half-built one): its namespaces, /etc/netns/<ns> and state file."""
    from tracer.lab import builder

    removed = builder.down(prefix)
    listed = f": {' '.join(removed)}" if removed else ""
    click.echo(f"lab {prefix} down: removed {len(removed)} namespace(s){listed}")


@lab.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(as_json):
    """List the labs on this machine: prefix, topology, variant, status, namespaces present."""
    from tracer.lab import builder

    labs = builder.labs()  # reads the state files: no root needed
    if as_json:
        from tracer.output import json_out

        click.echo(json_out.dumps({"labs": labs}))
        return
    if not labs:
        click.echo("no labs on this machine (`why-route lab up` builds one)")
        return
    rows = [("PREFIX", "TOPOLOGY", "VARIANT", "STATUS", "NAMESPACES")]
    rows += [(lab["prefix"], lab["topology"] or "?", lab["variant"] or "?", lab["status"],
              f"{lab['namespaces']}/{lab['nodes']}") for lab in labs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@lab.command("status")
@PREFIX_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(prefix, as_json):
    """Show the lab's variant, nodes, interfaces with addresses, and failed variant commands."""
    from tracer.lab import builder

    report = builder.status(prefix)
    if as_json:
        from tracer.output import json_out

        click.echo(json_out.lab_status(report))
        return
    built = f"built in {report['seconds']:.2f} s" if report["seconds"] is not None else f"pid {report['pid']}"
    click.echo(f"lab {report['prefix']}: topology {report['topology']}, variant {report['variant']}, "
               f"{report['status']} ({built})")
    click.echo(f"source: {report['source']}")
    for node, info in report["nodes"].items():
        click.echo(f"\n{node} ({info['namespace']})" + ("" if info["present"] else ": namespace missing"))
        for interface in info["interfaces"]:
            details = interface["addresses"] + ([f"master {interface['master']}"] if interface["master"] else [])
            click.echo(f"  {interface['name']:<10} {interface['state']:<8} {', '.join(details)}".rstrip())
    failures = report["failures"]
    click.echo(f"\nfailed variant commands: {len(failures) or 'none'}")
    for failure in failures:
        click.echo("  " + _failure_text(failure).replace("\n", "\n    "))


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("node")
@PREFIX_OPTION
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(node, prefix, command):
    """Run COMMAND in NODE's namespace; its exit status is passed through.

    \b
    why-route lab exec macbook -- ping -c 1 8.8.8.8
    """
    from tracer.lab import builder

    return builder.exec_in(prefix, node, list(command))


def _failure_text(failure) -> str:
    """`route: $ CMD` then the command's own stderr, verbatim."""
    if not isinstance(failure, dict):
        failure = vars(failure)
    output = failure["stderr"] or f"(exit status {failure['returncode']}, no output)"
    return f"{failure['node']}: $ {failure['command']}\n{output}"
