"""The tp_btf build of a tracepoint probe reads through its BTF-typed arguments directly: BCC turns a
load through a raw tracepoint's argument into a helper call, and the probes hide the argument's
origin from it (probes/common.h, btf_pointer). Counted in the compiled programs of this kernel."""

import os
import struct

import pytest

from tracer.trace import kernel
from tracer.trace.btf import KernelFacts

BPF_CALL = 0x85
PROBE_READS = {4, 113}  # bpf_probe_read, bpf_probe_read_kernel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="compiling and loading probes needs root")


def _probe_reads(insns: bytes) -> int:
    return sum(1 for at in range(0, len(insns), 8)
               if insns[at] == BPF_CALL and struct.unpack_from("<i", insns, at + 4)[0] in PROBE_READS)


def _compiled_drop_probe(tp_btf: bool) -> bytes:
    probes = kernel.compile_probes(["drop.c"], KernelFacts.load(), tp_btf=tp_btf)
    try:
        return probes.bpf.dump_func(b"wr_tp__kfree_skb")
    finally:
        probes.cleanup()


def test_the_drop_probe_reads_the_skb_and_a_drops_namespace_without_helper_calls_as_tp_btf():
    raw, btf = _probe_reads(_compiled_drop_probe(False)), _probe_reads(_compiled_drop_probe(True))
    # skb->dev, dev->nd_net and net->ns.inum (before any drop is filtered out), skb->head,
    # skb->network_header and skb->_nfct: six helper calls fewer
    assert raw - btf == 6, (raw, btf)


def test_the_netfilter_probes_read_a_packet_in_one_helper_call_a_header_and_note_one_before_the_chains():
    probes = kernel.compile_probes(["netfilter.c"], KernelFacts.load())
    try:
        reads = _probe_reads(probes.bpf.dump_func(b"wr_hook_last"))
        first = probes.bpf.dump_func(b"wr_hook_first")
    finally:
        probes.cleanup()
    # the hook state, the devices, the namespace and the skb's fields by direct loads: 80 calls before
    assert reads <= 30, reads
    # before the chains a packet is only noted: a program of its own, not the whole one again (which
    # the verifier took a quarter of a second to walk at each start)
    assert len(first) // 8 < 60 and _probe_reads(first) == 0, len(first) // 8


def test_this_kernel_loads_tp_btf_programs():
    facts = KernelFacts.load()
    assert kernel.tp_btf_refused(facts.typedef_id("btf_trace_kfree_skb")) is None
    assert "no btf_trace_kfree_skb" in kernel.tp_btf_refused(None)
