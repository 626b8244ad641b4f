"""The job engine: the submit/poll lifecycle, the delivery state machine, the claim loops and
held leases, and the polling policy (backoff, learned durations)."""
