/* `why-route trace --check` only: does this kernel load an fentry program on fib4_rule_action
 * (which would give the deciding rule directly)? Loaded, then closed at once; never attached
 * during a trace. */
KFUNC_PROBE(fib4_rule_action)
{
    return 0;
}
