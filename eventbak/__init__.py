"""eventbak: an event-sourced backup tool that never loses its place."""

__version__ = "0.1.0"
