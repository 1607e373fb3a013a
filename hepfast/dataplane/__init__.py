"""The data plane's Python side: the supervisor, the worker process glue around the Cython loop
(`_worker`), the shared counter block and the listening sockets."""
