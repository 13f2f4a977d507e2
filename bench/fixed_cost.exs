# The fixed cost of one publish to one subscriber, in ns per call:
#
#     MIX_ENV=prod mix run bench/fixed_cost.exs [--rounds 150] [--batch 2000] [--channels 100000]
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
# raw_rr sends the same events to that process.

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
