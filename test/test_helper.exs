# Cross-process waits get 2 s, not ExUnit's 100 ms: on a loaded 2-core CI
# machine a subscriber process can take longer than that to be scheduled.
ExUnit.start(assert_receive_timeout: 2_000)
