"""dkebpf: eBPF host collector for DataKit."""
__version__ = "0.1.0"
