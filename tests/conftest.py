"""Test layers: `unit` (pure modules), `scenario` (data-driven scripts for the pure machines),
`inprocess` (engine, transport, nodes in this process), `multiprocess` (one OS process per node).

Shared helpers live in the `support` package; this file's directory is on `sys.path` (pytest's
default `prepend` import mode), which is what lets every layer `import support`.
"""
