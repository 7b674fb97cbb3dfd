"""bpf-netlog: packet-level L4/L7 logs. ``filter`` is the netlog_blacklist
language; ``filter_cbpf`` turns its header-field statements into the classic
BPF program of the packet sockets."""
