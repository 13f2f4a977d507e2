defmodule Yggdrasil.AdapterStressTest do
  # The adapter life cycle under concurrency: many first subscribers at once,
  # subscribing right after the adapter stopped, and random churn.
  use Yggdrasil.AdapterCase, async: true

  @moduletag :capture_log

  test "1000 concurrent first subscribers all succeed and share one adapter process" do
    channel = channel!()
    parent = self()

    pids =
      for _ <- 1..1000 do
        spawn(fn ->
          receive do
            :go -> :ok
          end

          send(parent, {:subscribed, self(), Yggdrasil.subscribe(channel)})

          receive do
            {:Y_CONNECTED, ^channel} -> :ok
          end

          send(parent, {:connected, self()})

          receive do
            {:Y_EVENT, ^channel, :hello} -> :ok
          end

          # Exactly one :Y_CONNECTED: a second one would have come before
          # the event (same sender).
          duplicate? =
            receive do
              {:Y_CONNECTED, _} -> true
            after
              0 -> false
            end

          send(parent, {:event, self(), duplicate?})

          receive do
            :stop -> :ok
          end
        end)
      end

    Enum.each(pids, &send(&1, :go))

    results =
      for pid <- pids do
        assert_receive {:subscribed, ^pid, result}, 10_000
        result
      end

    assert Enum.frequencies(results) == %{:ok => 1000}
    for pid <- pids, do: assert_receive({:connected, ^pid}, 10_000)

    adapter = adapter!(channel)
    assert MemoryBroker.adapters(channel) == [adapter]
    assert Engine.subscriber_count(key(channel)) == 1000
    assert MemoryBroker.setting(channel, {:overlap, adapter}) == nil

    :ok = Yggdrasil.publish(channel, :hello)
    for pid <- pids, do: assert_receive({:event, ^pid, false}, 10_000)

    ref = Process.monitor(adapter)
    Enum.each(pids, &send(&1, :stop))
    assert down_reason(ref, 10_000) == :normal
    assert Engine.subscriber_count(key(channel)) == 0
  end

  test "subscribing right after the last unsubscribe gets a fresh adapter, 200 times" do
    channel = channel!()
    :ok = Yggdrasil.subscribe(channel)
    assert_receive {:Y_CONNECTED, ^channel}, @wait

    last =
      Enum.reduce(1..200, adapter!(channel), fn _, old ->
        ref = Process.monitor(old)
        assert :ok = Yggdrasil.unsubscribe(channel)
        assert :ok = Yggdrasil.subscribe(channel)
        # The old adapter was gone before the new one started.
        refute Process.alive?(old)
        assert_receive {:DOWN, ^ref, :process, ^old, :normal}, @wait
        assert_receive {:Y_DISCONNECTED, ^channel}, @wait
        assert_receive {:Y_CONNECTED, ^channel}, @wait

        new = adapter!(channel)
        assert new != old
        new
      end)

    :ok = Yggdrasil.publish(channel, :last)
    assert events_until_sentinel(channel) == [:last]
    refute_received {:Y_CONNECTED, _}
    refute_received {:Y_DISCONNECTED, _}
    assert MemoryBroker.setting(channel, {:overlap, last}) == nil

    ref = Process.monitor(last)
    :ok = Yggdrasil.unsubscribe(channel)
    assert down_reason(ref) == :normal
  end

  test "subscribing right after the last subscriber died works, 200 times" do
    channel = channel!()
    {first, :ok} = start_subscriber(channel)
    assert_receive {^first, {:Y_CONNECTED, ^channel}}, @wait

    {last, adapters} =
      Enum.reduce(1..200, {first, MapSet.new()}, fn _, {previous, adapters} ->
        kill(previous)
        {next, result} = start_subscriber(channel)
        assert result == :ok
        # The old adapter may still be running when the new subscriber
        # joins; it then gets its own adapter as soon as the old one stops.
        assert_receive {^next, {:Y_CONNECTED, ^channel}}, 5_000
        {next, MapSet.put(adapters, adapter!(channel))}
      end)

    assert MapSet.size(adapters) > 1
    adapter = adapter!(channel)
    :ok = Yggdrasil.publish(channel, :alive)
    assert_receive {^last, {:Y_EVENT, ^channel, :alive}}, @wait

    for pid <- adapters, do: assert(MemoryBroker.setting(channel, {:overlap, pid}) == nil)

    ref = Process.monitor(adapter)
    kill(last)
    assert down_reason(ref) == :normal
    eventually(fn -> MemoryBroker.adapters(channel) == [] end)
  end

  # Many workers keep the channel busy; few empty it all the time, which
  # races the adapter's stop against new subscribers.
  for {workers, rounds} <- [{40, 20}, {2, 300}, {1, 300}] do
    test "random churn of #{workers} subscribers never leaks an adapter nor runs two at once" do
      churn_test(unquote(workers), unquote(rounds))
    end
  end

  defp churn_test(count, rounds) do
    channel = channel!()
    parent = self()

    workers =
      for i <- 1..count do
        spawn_link(fn ->
          :rand.seed(:exsss, {i, 7, 13})
          churn(channel, rounds)
          :ok = Yggdrasil.subscribe(channel)

          receive do
            {:Y_CONNECTED, ^channel} -> :ok
          after
            5_000 -> raise "no :Y_CONNECTED"
          end

          send(parent, {:done, self()})

          # Then some leave by unsubscribing, the others by exiting.
          receive do
            :exit ->
              :ok

            :unsubscribe ->
              :ok = Yggdrasil.unsubscribe(channel)

              receive do
                :exit -> :ok
              end
          end
        end)
      end

    for pid <- workers, do: assert_receive({:done, ^pid}, 15_000)

    # Everybody is subscribed and connected, through one adapter.
    eventually(fn -> Engine.subscriber_count(key(channel)) == length(workers) end)
    assert [adapter] = MemoryBroker.adapters(channel)
    assert adapter!(channel) == adapter
    assert Yggdrasil.Subscriber.Manager.connected?(channel)

    for {pid, n} <- Enum.with_index(workers) do
      Process.unlink(pid)

      case rem(n, 3) do
        0 -> Process.exit(pid, :kill)
        1 -> send(pid, :exit)
        2 -> send(pid, :unsubscribe)
      end
    end

    eventually(fn -> Generator.status(channel) == nil end)
    eventually(fn -> MemoryBroker.adapters(channel) == [] end)
    assert Engine.subscriber_count(key(channel)) == 0
    assert :ets.match(:yggdrasil_memory_settings, {{channel.name, {:overlap, :_}}, :_}) == []
    for pid <- workers, do: send(pid, :exit)
  end

  # Subscribes, waits for :Y_CONNECTED, then maybe leaves; `rounds` times.
  defp churn(_channel, 0), do: :ok

  defp churn(channel, rounds) do
    :ok = Yggdrasil.subscribe(channel)

    receive do
      {:Y_CONNECTED, ^channel} -> :ok
    after
      5_000 -> raise "no :Y_CONNECTED"
    end

    case :rand.uniform(3) do
      1 ->
        :ok = Yggdrasil.unsubscribe(channel)
        flush()

      2 ->
        # A short-lived helper subscribes and dies meanwhile.
        {pid, ref} = spawn_monitor(fn -> Yggdrasil.subscribe(channel) end)

        receive do
          {:DOWN, ^ref, :process, ^pid, _} -> :ok
        end

        :ok = Yggdrasil.unsubscribe(channel)
        flush()

      3 ->
        :ok = Yggdrasil.unsubscribe(channel)
        flush()
        :ok = Yggdrasil.subscribe(channel)
        :ok = Yggdrasil.unsubscribe(channel)
        flush()
    end

    churn(channel, rounds - 1)
  end

  defp flush do
    receive do
      {tag, _} when tag in [:Y_CONNECTED, :Y_DISCONNECTED] -> flush()
    after
      0 -> :ok
    end
  end
end
