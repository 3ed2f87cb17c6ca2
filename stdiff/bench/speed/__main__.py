"""``python -m stdiff.bench speed`` (or ``python -m stdiff.bench.speed``): see the package docstring."""

from stdiff.bench.speed import main

main()
