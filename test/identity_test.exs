defmodule Yggdrasil.IdentityTest do
  # Channel identity (spec section 2, improved), dead subscribers, and
  # fan-outs larger than the engine's delivery chunk. What the engine's
  # global counts (Yggdrasil.info/0) say about the same is checked on a node
  # of its own, in global_counts_test.exs. Not async: the fan-outs use
  # thousands of processes.
  use ExUnit.Case, async: false

  import Yggdrasil.Test.Helpers

  # assert_receive waits this long (ms) for other processes on a busy machine.
  @timeout 2_000

  alias Yggdrasil.Channel
  alias Yggdrasil.Engine
  alias Yggdrasil.Native

  # Two names whose complete channels have the same :erlang.phash2 (found
  # by a search over "collide:<i>" and over integers; re-checked below).
  @binary_pair {"collide:3788", "collide:10977"}
  @integer_pair {2954, 7289}

  defp full(name) do
    {:ok, channel} = Yggdrasil.gen_channel(name: name)
    channel
  end

  defp key(channel), do: Channel.key(channel)

  # Collects `{:Y_EVENT, ...}` payloads until `sentinel` arrives on `channel`.
  defp events_until(channel, sentinel, acc \\ []) do
    receive do
      {:Y_EVENT, ^channel, ^sentinel} ->
        Enum.reverse(acc)

      {:Y_EVENT, %Channel{} = got, message} ->
        events_until(channel, sentinel, [{got.name, message} | acc])
    after
      5_000 -> flunk("sentinel never arrived")
    end
  end

  describe "channels whose :erlang.phash2 collide" do
    test "the hard-coded pairs really collide (and so do their transform_name/1)" do
      for {a, b} <- [@binary_pair, @integer_pair] do
        assert a != b
        assert :erlang.phash2(full(a)) == :erlang.phash2(full(b))

        assert Yggdrasil.Backend.transform_name(full(a)) ==
                 Yggdrasil.Backend.transform_name(full(b))
      end
    end

    test "a collision is found by a short search, too" do
      {a, b} = find_collision()
      assert :erlang.phash2(full(a)) == :erlang.phash2(full(b))
      assert_isolated(full(a), full(b))
    end

    test "a subscriber of one never receives the other's events" do
      for {a, b} <- [@binary_pair, @integer_pair] do
        assert_isolated(full(a), full(b))
      end
    end

    test "two subscribers on colliding channels each get only their own" do
      {a, b} = @binary_pair
      {channel_a, channel_b} = {full(a), full(b)}
      parent = self()

      listeners =
        for channel <- [channel_a, channel_b] do
          spawn_link(fn ->
            :ok = Yggdrasil.subscribe(channel)
            send(parent, {:ready, self()})
            listen(parent, channel, [])
          end)
        end

      for pid <- listeners, do: assert_receive({:ready, ^pid}, @timeout)

      for i <- 1..50 do
        :ok = Yggdrasil.publish(channel_a, {:a, i})
        :ok = Yggdrasil.publish(channel_b, {:b, i})
      end

      [la, lb] = listeners
      for pid <- listeners, do: send(pid, :report)
      assert_receive {:report, ^la, got_a}, @timeout
      assert_receive {:report, ^lb, got_b}, @timeout
      assert got_a == for(i <- 1..50, do: {:a, i})
      assert got_b == for(i <- 1..50, do: {:b, i})
    end
  end

  describe "what makes two channels different" do
    test "names that are == but not =:= are different channels" do
      assert_isolated(full(1), full(1.0))
      assert_isolated(full("a"), full(:a))
      assert_isolated(full(~c"a"), full("a"))
      assert_isolated(full({1, 2}), full([1, 2]))
      assert_isolated(full(%{1 => :x}), full(%{1.0 => :x}))
    end

    test "every field but metadata is part of the identity" do
      name = {:fields, make_ref()}
      {:ok, base} = Yggdrasil.gen_channel(name: name)
      {:ok, json} = Yggdrasil.gen_channel(name: name, transformer: :json)
      {:ok, namespaced} = Yggdrasil.gen_channel(name: name, namespace: Some.Namespace)
      {:ok, by_module} = Yggdrasil.gen_channel(name: name, backend: Yggdrasil.Backend.Default)

      for other <- [json, namespaced, by_module], do: assert_isolated(base, other)

      {:ok, with_metadata} = Yggdrasil.gen_channel(name: name, metadata: %{m: 1})
      assert key(with_metadata) == key(base)
    end

    test "equal names built separately are the same channel" do
      name = %{"deep" => [1, {:tuple, "x"}, %{a: [make_ref()]}]}
      copy = :erlang.binary_to_term(:erlang.term_to_binary(name))
      :ok = Yggdrasil.subscribe(name: name)
      :ok = Yggdrasil.publish([name: copy], :same)
      channel = full(name)
      assert_receive {:Y_EVENT, ^channel, :same}, @timeout
      :ok = Yggdrasil.unsubscribe(name: copy)
      assert Engine.subscriber_count(key(channel)) == 0
    end
  end

  describe "a dead subscriber" do
    test "is dropped from its channel" do
      channel = full({:dead, make_ref()})
      parent = self()

      pid =
        spawn(fn ->
          :ok = Yggdrasil.subscribe(channel)
          send(parent, :subscribed)
          Process.sleep(:infinity)
        end)

      assert_receive :subscribed, @timeout
      assert Engine.subscribers(key(channel)) == [pid]

      kill(pid)
      eventually(fn -> Engine.subscriber_count(key(channel)) == 0 end)
      refute Engine.subscribed?(key(channel), pid)
      assert Engine.subscribers(key(channel)) == []
      # Publishing afterwards is fine (that it reaches nobody: below).
      assert :ok = Yggdrasil.publish(channel, "to the dead")
    end

    test "with many channels is dropped from all of them at once" do
      channels = for i <- 1..2_000, do: full({:many, i, make_ref()})
      parent = self()

      pid =
        spawn(fn ->
          for channel <- channels, do: :ok = Yggdrasil.subscribe(channel)
          send(parent, :subscribed)
          Process.sleep(:infinity)
        end)

      assert_receive :subscribed, 10_000
      assert Enum.all?(channels, &Engine.subscribed?(key(&1), pid))

      kill(pid)
      # More channels than the monitor removes inline: the reaper thread does it.
      eventually(fn -> Enum.all?(channels, &(Engine.subscriber_count(key(&1)) == 0)) end)
      refute Enum.any?(channels, &Engine.subscribed?(key(&1), pid))
    end

    test "does not disturb the other subscribers of its channels" do
      channel = full({:survivor, make_ref()})
      parent = self()
      :ok = Yggdrasil.subscribe(channel)

      victim =
        spawn(fn ->
          :ok = Yggdrasil.subscribe(channel)
          send(parent, :subscribed)
          Process.sleep(:infinity)
        end)

      assert_receive :subscribed, @timeout
      kill(victim)
      eventually(fn -> Engine.subscriber_count(key(channel)) == 1 end)
      assert Engine.subscribers(key(channel)) == [self()]
      :ok = Yggdrasil.publish(channel, "still here")
      assert_receive {:Y_EVENT, ^channel, "still here"}, @timeout
    end

    test "a process that exits normally right after subscribing is dropped too" do
      channel = full({:short_lived, make_ref()})

      pids =
        for _ <- 1..200 do
          spawn(fn -> :ok = Yggdrasil.subscribe(channel) end)
        end

      for pid <- pids do
        ref = Process.monitor(pid)
        assert_receive {:DOWN, ^ref, :process, ^pid, _}, @timeout
      end

      eventually(fn -> Engine.subscriber_count(key(channel)) == 0 end)
    end
  end

  describe "fan-out larger than the delivery chunk" do
    @subscribers 5_000

    test "5000 subscribers each get every event exactly once" do
      channel = full({:fan_out, make_ref()})
      pids = start_counters(channel, @subscribers)
      assert Engine.subscriber_count(key(channel)) == @subscribers

      for i <- 1..3, do: :ok = Yggdrasil.publish(channel, {:event, i})
      assert report(pids) == Map.new(pids, &{&1, [{:event, 1}, {:event, 2}, {:event, 3}]})
    end

    test "a continuation finishes the fan-out and is usable once" do
      channel = full({:continuation, make_ref()})
      pids = start_counters(channel, 20_000)
      key = key(channel)
      event = {:Y_EVENT, channel, :chunked}

      # Drive the NIF by hand: at most this many rounds before every
      # subscriber is served, whatever the machine's speed.
      {rounds, continuations} = drive(Native.publish(key, event), event, 0, [])
      assert rounds <= 20_000

      # A spent continuation delivers nothing more.
      for continuation <- continuations do
        assert :ok = Native.fanout_more(continuation, event)
      end

      # A listing's cursor is of another kind: fanout_more refuses it (and
      # sends nothing: the report below has one event per subscriber).
      assert {_page, listing} = Native.subscribers_page(key)
      assert is_reference(listing)
      assert_raise ArgumentError, fn -> Native.fanout_more(listing, event) end
      assert {[_ | _], _rest} = Native.subscribers_more(listing)

      assert report(pids) == Map.new(pids, &{&1, [:chunked]})
    end

    test "subscribers dying during a fan-out do not disturb it" do
      channel = full({:dying, make_ref()})
      pids = start_counters(channel, 5_000)
      {doomed, survivors} = Enum.split(pids, 2_500)
      for pid <- doomed, do: Process.unlink(pid) && Process.exit(pid, :kill)
      :ok = Yggdrasil.publish(channel, :survived)
      assert report(survivors) == Map.new(survivors, &{&1, [:survived]})
      # The survivors end after reporting: the channel empties.
      eventually(fn -> Engine.subscriber_count(key(channel)) == 0 end)
    end
  end

  # Subscribers that record the messages of their Y_EVENTs and report them.
  defp start_counters(channel, n) do
    parent = self()

    pids =
      for _ <- 1..n do
        spawn_link(fn ->
          :ok = Yggdrasil.subscribe(channel)
          send(parent, {:counter_ready, self()})
          count([])
        end)
      end

    for pid <- pids, do: assert_receive({:counter_ready, ^pid}, 10_000)
    pids
  end

  defp count(acc) do
    receive do
      {:Y_EVENT, _, message} ->
        count([message | acc])

      {:report, from} ->
        send(from, {:counted, self(), Enum.reverse(acc)})

      _other ->
        count(acc)
    end
  end

  # Events and the report request come from this process, so every event
  # is in each mailbox before its :report.
  defp report(pids) do
    for pid <- pids, do: send(pid, {:report, self()})

    Map.new(pids, fn pid ->
      assert_receive {:counted, ^pid, messages}, 10_000
      {pid, messages}
    end)
  end

  defp drive(:ok, _event, rounds, continuations), do: {rounds, continuations}

  defp drive({:more, continuation}, event, rounds, continuations) do
    drive(Native.fanout_more(continuation, event), event, rounds + 1, [
      continuation | continuations
    ])
  end

  defp listen(parent, channel, acc) do
    receive do
      {:Y_EVENT, ^channel, message} -> listen(parent, channel, [message | acc])
      {:Y_EVENT, _other, message} -> listen(parent, channel, [{:foreign, message} | acc])
      :report -> send(parent, {:report, self(), Enum.reverse(acc)})
      _ -> listen(parent, channel, acc)
    end
  end

  # Subscribes this process to `a` only, publishes on both, and checks that
  # only `a`'s events arrive (the sentinel is published on `a` last).
  defp assert_isolated(%Channel{} = a, %Channel{} = b) do
    refute key(a) === key(b)
    :ok = Yggdrasil.subscribe(a)
    assert_receive {:Y_CONNECTED, ^a}, @timeout
    # Maps, so that :json channels take them too.
    :ok = Yggdrasil.publish(b, %{"for" => "b"})
    :ok = Yggdrasil.publish(a, %{"for" => "a"})
    sentinel = %{"sentinel" => inspect(make_ref())}
    :ok = Yggdrasil.publish(a, sentinel)
    assert events_until(a, sentinel) == [{a.name, %{"for" => "a"}}]
    :ok = Yggdrasil.unsubscribe(a)
    assert_receive {:Y_DISCONNECTED, ^a}, @timeout
    assert Engine.subscriber_count(key(b)) == 0
  end

  defp find_collision do
    Enum.reduce_while(0..1_000_000, %{}, fn i, seen ->
      name = "search:#{i}"
      hash = :erlang.phash2(full(name))

      case seen do
        %{^hash => other} -> {:halt, {other, name}}
        _ -> {:cont, Map.put(seen, hash, name)}
      end
    end)
  end
end
