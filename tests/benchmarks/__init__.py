"""Speed benchmarks (pytest-benchmark): ``make bench`` times them, ``make test`` runs each once."""
