"""Pure simulation of the kernel's decisions over an immutable model (no kernel access)."""
