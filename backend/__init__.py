"""xbarc.backend."""
