# tests/parallel/ holds files that run on every rank under bfrun; the driver
# tests/test_parallel_suites.py launches them. They are not collected directly.
collect_ignore = ["parallel"]
