# Scenario 5 of the benchmark suite alone: `mix run bench/subscribe.exs [--quick]`
# (MIX_ENV=prod recommended). Prints the table; see bench/run.exs.
Code.require_file("support/harness.exs", __DIR__)
YggBench.Harness.main(["--only", "subscribe" | System.argv()])
