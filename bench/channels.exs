# Scenario 2 of the benchmark suite alone: `mix run bench/channels.exs [--quick]`
# (MIX_ENV=prod recommended). Prints the table; see bench/run.exs.
Code.require_file("support/harness.exs", __DIR__)
YggBench.Harness.main(["--only", "channels" | System.argv()])
