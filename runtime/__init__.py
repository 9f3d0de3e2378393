"""xbarc.runtime."""
