"""HTTP client plumbing shared by upstream requests and callbacks."""
