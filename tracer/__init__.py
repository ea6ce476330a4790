"""why-route: explain the kernel's routing, netfilter and NAT decisions for a flow."""

__version__ = "0.1.0"
