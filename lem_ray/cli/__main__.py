"""`python -m lem_ray.cli`, the same as the `lem-ray` command."""

from lem_ray.cli.main import main

main()
