from lem_ray.cli.main import main

main()
