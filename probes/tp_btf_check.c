/* `why-route trace --check` only: does this kernel load a BTF-typed tracepoint program (tp_btf) on
 * skb:kfree_skb, whose pointer arguments the probes then read without a helper call? Loaded, then
 * closed at once; never attached. */
int wr_btf__kfree_skb(struct bpf_raw_tracepoint_args *ctx)
{
    return 0;
}
