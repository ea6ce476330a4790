"""why-route trace: eBPF on netfilter hooks and FIB lookups, drops and conntrack events, per flow
next to the simulation. See docs/trace.md."""
