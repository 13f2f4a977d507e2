# Scenario 4 of the benchmark suite alone: `mix run bench/round_trip.exs [--quick]`
# (MIX_ENV=prod recommended). Prints the table; see bench/run.exs.
Code.require_file("support/harness.exs", __DIR__)
YggBench.Harness.main(["--only", "round_trip" | System.argv()])
