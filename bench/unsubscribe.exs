# Scenario 6 of the benchmark suite alone: `mix run bench/unsubscribe.exs [--quick]`
# (MIX_ENV=prod recommended). Prints the table; see bench/run.exs.
Code.require_file("support/harness.exs", __DIR__)
YggBench.Harness.main(["--only", "unsubscribe" | System.argv()])
