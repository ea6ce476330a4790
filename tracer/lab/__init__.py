"""The lab: a topology file turned into network namespaces, for rehearsal and tests."""
