"""pushbridge: turns polling of asynchronous inference APIs into signed webhooks."""

__version__ = "0.1.0"
