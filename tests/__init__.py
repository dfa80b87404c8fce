"""polarquant test suite."""
