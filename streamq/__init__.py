"""streamq: placeholder, replaced by the core."""
