# The fixed cost of one publish to one subscriber, in ns per call:
#
#     MIX_ENV=bench mix run bench/fixed_cost.exs [--rounds 150] [--batch 2000] [--channels 100000]
#
# raw `send/2`, the NIF alone (`Yggdrasil.Native.publish/2` with a prebuilt
# event), native (`Yggdrasil.Backend.Default.publish/3`) and the whole
# `Yggdrasil.publish/2`, in interleaved batches whose order rotates every
# round. The subscriber is suspended while a round runs (its messages only
# queue), so only the publishing side is timed, and drained between rounds.
# The minimum over rounds is the figure least moved by other load on the
# machine; p25 is shown next to it. The `*_rr` rows publish round-robin on
# `--channels` channels, all subscribed to by the same process (what a lookup
# among many channels costs: the cache misses of bucket, key and members);
# raw_rr sends the same events to that process. floor_call is a NIF call
# that does nothing, floor_send one that only `enif_send`s the event: what
# no NIF-based publish can go below.
#
# A second table runs the one-channel rows against a subscriber that counts
# its messages while they arrive (as `make bench` does), timing each batch
# until the last message was received: the publishing and receiving
# processes then share the machine's two cores, and every row costs more.

{options, _, _} =
  OptionParser.parse(System.argv(),
    strict: [rounds: :integer, batch: :integer, channels: :integer]
  )

rounds = Keyword.get(options, :rounds, 150)
batch = Keyword.get(options, :batch, 2_000)
many = Keyword.get(options, :channels, 100_000)

{:ok, _} = Application.ensure_all_started(:yggdrasil)
{:ok, channel} = Yggdrasil.gen_channel(name: {:fixed_cost, make_ref()})

defmodule FixedCost do
  # One loop per comparator, each calling its function directly: a shared
  # loop taking a fun would add a fun call (~9 ns) to every timed call, a
  # good part of what the rows tell apart.
  def raw(0, _pid, _event), do: :ok

  def raw(n, pid, event) do
    send(pid, event)
    raw(n - 1, pid, event)
  end

  def floor_call(0, _pid, _event), do: :ok

  def floor_call(n, pid, event) do
    :ok = Yggdrasil.Native.floor_call(pid, event)
    floor_call(n - 1, pid, event)
  end

  def floor_send(0, _pid, _event), do: :ok

  def floor_send(n, pid, event) do
    :ok = Yggdrasil.Native.floor_send(pid, event)
    floor_send(n - 1, pid, event)
  end

  def nif(0, _channel, _event), do: :ok

  def nif(n, channel, event) do
    :ok = Yggdrasil.Native.publish(channel, event)
    nif(n - 1, channel, event)
  end

  def native(0, _channel, _message), do: :ok

  def native(n, channel, message) do
    :ok = Yggdrasil.Backend.Default.publish(channel, message, nil)
    native(n - 1, channel, message)
  end

  # Round-robin over a tuple of channels (or events), from position `at`.
  def rr(0, _items, at, _send), do: at

  def rr(n, items, at, send) do
    at = if at >= tuple_size(items), do: 0, else: at
    send.(elem(items, at))
    rr(n - 1, items, at + 1, send)
  end

  def yggdrasil(0, _channel, _message), do: :ok

  def yggdrasil(n, channel, message) do
    :ok = Yggdrasil.publish(channel, message)
    yggdrasil(n - 1, channel, message)
  end

  # Subscribes, then empties its mailbox whenever asked.
  def subscriber(channels, parent) do
    Enum.each(channels, &(:ok = Yggdrasil.subscribe(&1)))
    send(parent, :subscribed)
    serve()
  end

  defp serve do
    receive do
      {:drain, from} ->
        drain()
        send(from, :drained)
    after
      60_000 -> exit(:idle)
    end

    serve()
  end

  # Subscribes, then counts the events it is told to expect.
  def counter(channel, parent) do
    :ok = Yggdrasil.subscribe(channel)
    send(parent, :subscribed)
    count_loop()
  end

  defp count_loop do
    receive do
      {:count, n, from} ->
        count(n)
        send(from, :counted)
        count_loop()
    after
      60_000 -> exit(:idle)
    end
  end

  defp count(0), do: :ok

  defp count(n) do
    receive do
      {:Y_EVENT, _, _} -> count(n - 1)
    end
  end

  defp drain do
    receive do
      _ -> drain()
    after
      0 -> :ok
    end
  end
end

parent = self()

channels =
  for n <- 1..many do
    {:ok, channel} = Yggdrasil.gen_channel(name: {:fixed_cost, n})
    channel
  end

subscriber = spawn_link(fn -> FixedCost.subscriber([channel | channels], parent) end)
receive do: (:subscribed -> :ok)

message = {:chat, 42, :hello}
event = {:Y_EVENT, channel, message}
channels = List.to_tuple(channels)
events = channels |> Tuple.to_list() |> Enum.map(&{:Y_EVENT, &1, message}) |> List.to_tuple()
# Where each round-robin row goes on from: a third of the channels apart,
# so no row finds the channels the previous one just warmed in the cache.
cursor = :counters.new(3, [])
for row <- 1..3, do: :counters.put(cursor, row, div((row - 1) * many, 3))

rr = fn row, items, send ->
  fn n -> :counters.put(cursor, row, FixedCost.rr(n, items, :counters.get(cursor, row), send)) end
end

modes = [
  raw: fn n -> FixedCost.raw(n, subscriber, event) end,
  floor_call: fn n -> FixedCost.floor_call(n, subscriber, event) end,
  floor_send: fn n -> FixedCost.floor_send(n, subscriber, event) end,
  nif: fn n -> FixedCost.nif(n, channel, event) end,
  native: fn n -> FixedCost.native(n, channel, message) end,
  yggdrasil: fn n -> FixedCost.yggdrasil(n, channel, message) end,
  raw_rr: rr.(1, events, &send(subscriber, &1)),
  native_rr: rr.(2, channels, &Yggdrasil.Backend.Default.publish(&1, message, nil)),
  yggdrasil_rr: rr.(3, channels, &Yggdrasil.publish(&1, message))
]

Enum.each(modes, fn {_, run} -> run.(100) end)

samples =
  Enum.reduce(1..rounds, %{}, fn round, samples ->
    send(subscriber, {:drain, self()})
    receive do: (:drained -> :ok)
    :erlang.suspend_process(subscriber)
    shift = rem(round, length(modes))

    samples =
      Enum.reduce(Enum.drop(modes, shift) ++ Enum.take(modes, shift), samples, fn {name, run},
                                                                                  samples ->
        started = :erlang.monotonic_time(:nanosecond)
        run.(batch)
        ns = (:erlang.monotonic_time(:nanosecond) - started) / batch
        Map.update(samples, name, [ns], &[ns | &1])
      end)

    :erlang.resume_process(subscriber)
    samples
  end)

IO.puts("one subscriber, #{rounds} rounds of #{batch} calls per comparator, #{many} channels")

for {name, _} <- modes do
  floor = if name in [:raw_rr, :native_rr, :yggdrasil_rr], do: :raw_rr, else: :raw
  raw = Enum.min(samples[floor])
  sorted = Enum.sort(samples[name])
  min = hd(sorted)
  p25 = Enum.at(sorted, div(length(sorted), 4))

  :io.format("~-12s min ~6.1f ns   p25 ~6.1f ns   raw/this ~4.2f~n", [
    Atom.to_string(name),
    min,
    p25,
    raw / min
  ])
end

# The same one-channel rows, the subscriber counting as messages arrive.
{:ok, counted} = Yggdrasil.gen_channel(name: {:fixed_cost, :counted, make_ref()})
counter = spawn_link(fn -> FixedCost.counter(counted, parent) end)
receive do: (:subscribed -> :ok)
counted_event = {:Y_EVENT, counted, message}
running_batch = 10_000
running_rounds = max(div(rounds, 3), 5)

running = [
  raw: fn n -> FixedCost.raw(n, counter, counted_event) end,
  floor_send: fn n -> FixedCost.floor_send(n, counter, counted_event) end,
  nif: fn n -> FixedCost.nif(n, counted, counted_event) end,
  native: fn n -> FixedCost.native(n, counted, message) end,
  yggdrasil: fn n -> FixedCost.yggdrasil(n, counted, message) end
]

running_samples =
  Enum.reduce(1..running_rounds, %{}, fn round, samples ->
    shift = rem(round, length(running))

    Enum.reduce(Enum.drop(running, shift) ++ Enum.take(running, shift), samples, fn {name, run},
                                                                                    samples ->
      send(counter, {:count, running_batch, self()})
      started = :erlang.monotonic_time(:nanosecond)
      run.(running_batch)
      receive do: (:counted -> :ok)
      ns = (:erlang.monotonic_time(:nanosecond) - started) / running_batch
      Map.update(samples, name, [ns], &[ns | &1])
    end)
  end)

IO.puts(
  "\nsubscriber counting while messages arrive, #{running_rounds} rounds of " <>
    "#{running_batch} publishes, ns per message until the last was received"
)

raw_median = Enum.at(Enum.sort(running_samples[:raw]), div(running_rounds, 2))

for {name, _} <- running do
  sorted = Enum.sort(running_samples[name])
  median = Enum.at(sorted, div(running_rounds, 2))

  :io.format("~-12s min ~6.1f ns   median ~6.1f ns   raw/this ~4.2f (medians)~n", [
    Atom.to_string(name),
    hd(sorted),
    median,
    raw_median / median
  ])
end
