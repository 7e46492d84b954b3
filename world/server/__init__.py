"""Serving worlds over ZeroMQ: the wire protocol and its client, the worker (core, I/O loop, command
line, process management), sessions, admission, batching, authentication and the Ray cluster."""
