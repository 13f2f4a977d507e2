defmodule Yggdrasil.Test.QuietCounts do
  @moduledoc false
  # Scenarios whose checks read the engine's global counts (`Yggdrasil.info/0`).
  # They run on a peer node of their own (`Yggdrasil.Test.Cluster.start_peer!/1`)
  # where nothing else subscribes, so the counts move only by what the scenario
  # does and are compared exactly. In the test VM they cannot be: other tests'
  # processes subscribe and die at any time, also after their test ended (a
  # global count once moved by one channel between two reads: 2003 against 2004).
  #
  # They run ON the peer, so they live here, in a compiled module.

  import Yggdrasil.Test.Helpers

  @doc """
  A process subscribes to `n` fresh channels and is killed; then one of them
  is published to. Returns the info before, with the process alive, and after
  its death was handled, and the deliveries of that last publish.
  """
  def death(n) do
    channels =
      for i <- 1..n do
        {:ok, channel} = Yggdrasil.gen_channel(name: {:quiet_death, i, make_ref()})
        channel
      end

    parent = self()
    before = Yggdrasil.info()

    pid =
      spawn(fn ->
        for channel <- channels, do: :ok = Yggdrasil.subscribe(channel)
        send(parent, :subscribed)
        Process.sleep(:infinity)
      end)

    receive do
      :subscribed -> :ok
    after
      30_000 -> raise "the subscriber did not subscribe"
    end

    alive = Yggdrasil.info()
    kill(pid)
    eventually(fn -> Yggdrasil.info().subscriptions == before.subscriptions end, "cleanup")
    after_death = Yggdrasil.info()
    :ok = Yggdrasil.publish(hd(channels), "to the dead")

    %{
      before: before,
      alive: alive,
      after_death: after_death,
      published: Yggdrasil.info().deliveries - after_death.deliveries
    }
  end

  @doc """
  `n` processes subscribe to one channel, which gets `events` publishes;
  returns the deliveries the engine counted.
  """
  def fan_out(n, events) do
    {:ok, channel} = Yggdrasil.gen_channel(name: {:quiet_fan_out, make_ref()})
    parent = self()

    pids =
      for _ <- 1..n do
        spawn(fn ->
          :ok = Yggdrasil.subscribe(channel)
          send(parent, :subscribed)
          sink()
        end)
      end

    for _ <- pids do
      receive do
        :subscribed -> :ok
      after
        30_000 -> raise "a subscriber did not subscribe"
      end
    end

    before = Yggdrasil.info().deliveries
    for i <- 1..events, do: :ok = Yggdrasil.publish(channel, {:event, i})
    counted = Yggdrasil.info().deliveries - before
    Enum.each(pids, &kill/1)
    counted
  end
end
