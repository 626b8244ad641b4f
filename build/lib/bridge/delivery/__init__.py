"""Outbound callbacks: one signed POST (sender), the SSRF policy (urlpolicy), per-host caps
(hostgate) and Standard Webhooks signatures (signing)."""
