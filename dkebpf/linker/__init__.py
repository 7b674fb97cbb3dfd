"""``dkebpf linker``: joins the spans that collectors post into traces and
writes them to DataKit as tracing data (issue 13). join.py links, over
numpy columns; windows.py keeps event-time windows on disk; ingest.py reads
posted spans; server.py is the HTTP front and the command line."""
