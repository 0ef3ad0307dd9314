"""Radio and bus drivers, each with a simulated twin beside it."""
