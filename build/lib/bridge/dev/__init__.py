"""Development tools shipped with pushbridge: the upstream emulators, a webhook receiver and
the demo. Only `bridge.cli` (and tests, benchmarks) may import this package; the core never does."""
