# The main job (`make demo`): subscribes processes, publishes, shows what
# arrives, then a quick throughput comparison against the baselines, all
# measured side by side in this run.
defmodule Demo do
  alias Yggdrasil.Channel

  def run do
    IO.puts("== native Yggdrasil demo (#{machine()})\n")
    show_messages()
    show_json()
    IO.puts("\n== throughput: deliveries per second, median of 5 interleaved rounds")
    IO.puts("   (every comparator sends {:Y_EVENT, channel, payload} to the same processes)\n")
    throughput(1, 100_000)
    throughput(100, 2_000)
    throughput(10_000, 20)
  end

  # -- 1. what a subscriber sees -------------------------------------------

  defp show_messages do
    {:ok, channel} = Yggdrasil.gen_channel(name: "demo:room")
    parent = self()

    printers =
      for n <- 1..2 do
        spawn_link(fn ->
          :ok = Yggdrasil.subscribe(channel)
          send(parent, {:subscribed, n})
          print_loop(n, parent)
        end)
      end

    for n <- 1..2, do: receive(do: ({:subscribed, ^n} -> :ok))
    :ok = Yggdrasil.publish(channel, "hello, subscribers")
    :ok = Yggdrasil.publish(channel, %{temperature: 21.5}, metadata: %{sensor: 7})
    for _ <- 1..2, _ <- 1..3, do: receive(do: (:printed -> :ok))
    for pid <- printers, do: send(pid, :leave)
    for _ <- 1..2, do: receive(do: (:printed -> :ok))
    IO.puts("   engine after they left: #{inspect(Yggdrasil.info())}\n")
  end

  defp print_loop(n, parent) do
    receive do
      :leave ->
        Yggdrasil.unsubscribe(name: "demo:room")
        print_loop(n, parent)

      message ->
        IO.puts("   subscriber #{n} got #{short(message)}")
        send(parent, :printed)
        if match?({:Y_DISCONNECTED, _}, message), do: :ok, else: print_loop(n, parent)
    end
  end

  defp short({:Y_EVENT, %Channel{name: name, metadata: meta}, message}),
    do: "{:Y_EVENT, #{inspect(name)} (metadata #{inspect(meta)}), #{inspect(message)}}"

  defp short({tag, %Channel{name: name}}), do: "{#{inspect(tag)}, #{inspect(name)}}"

  defp show_json do
    {:ok, channel} = Yggdrasil.gen_channel(name: "demo:json", transformer: :json)
    :ok = Yggdrasil.subscribe(channel)
    receive do: ({:Y_CONNECTED, ^channel} -> :ok)
    :ok = Yggdrasil.publish(channel, %{user: "ana", tags: [:a, :b], score: 9.5})

    receive do
      {:Y_EVENT, ^channel, decoded} ->
        IO.puts("   :json channel delivered #{inspect(decoded)}")
    end

    :ok = Yggdrasil.unsubscribe(channel)
    receive do: ({:Y_DISCONNECTED, ^channel} -> :ok)
  end

  # -- 2. throughput ---------------------------------------------------------

  defp throughput(subscribers, messages) do
    {:ok, channel} = Yggdrasil.gen_channel(name: {:demo, :bench, subscribers})
    registry = :"demo_registry_#{subscribers}"

    {:ok, _} =
      Registry.start_link(
        keys: :duplicate,
        name: registry,
        partitions: System.schedulers_online()
      )

    pids = for _ <- 1..subscribers, do: spawn_subscriber(channel, registry)
    event = {:Y_EVENT, channel, "payload"}

    comparators = [
      {"raw send/2 loop", fn -> for pid <- pids, do: send(pid, event) end},
      {"Registry.dispatch",
       fn ->
         Registry.dispatch(registry, :topic, fn entries ->
           for {pid, _} <- entries, do: send(pid, event)
         end)
       end},
      {"native engine", fn -> Yggdrasil.Backend.Default.publish(channel, "payload", nil) end},
      {"Yggdrasil.publish", fn -> Yggdrasil.publish(channel, "payload") end}
    ]

    rounds =
      for _ <- 1..5 do
        for {name, publish} <- comparators, do: {name, rate(pids, messages, publish)}
      end

    medians =
      for {name, _} <- comparators do
        rates = rounds |> Enum.map(&:proplists.get_value(name, &1)) |> Enum.sort()
        {name, Enum.at(rates, 2)}
      end

    raw = :proplists.get_value("raw send/2 loop", medians)
    registry_rate = :proplists.get_value("Registry.dispatch", medians)
    IO.puts("   #{subscribers} subscriber(s) x #{messages} messages")

    for {name, rate} <- medians do
      IO.puts(
        "     #{String.pad_trailing(name, 18)} #{format_rate(rate)}/s" <>
          "   #{ratio(rate, raw)} of raw   #{ratio(rate, registry_rate)} of Registry"
      )
    end

    for pid <- pids, do: Process.exit(pid, :kill)
    IO.puts("")
  end

  defp spawn_subscriber(channel, registry) do
    parent = self()

    pid =
      spawn(fn ->
        :ok = Yggdrasil.Backend.Default.subscribe(channel)
        {:ok, _} = Registry.register(registry, :topic, nil)
        send(parent, {:ready, self()})
        count_loop(0, 0, nil)
      end)

    receive do: ({:ready, ^pid} -> pid)
  end

  defp count_loop(count, target, notify) do
    receive do
      {:expect, n, from} ->
        count_loop(0, n, from)

      {:Y_EVENT, _, _} ->
        count = count + 1
        if count == target, do: send(notify, :done)
        count_loop(count, target, notify)
    end
  end

  defp rate(pids, messages, publish) do
    for pid <- pids, do: send(pid, {:expect, messages, self()})
    started = System.monotonic_time()
    for _ <- 1..messages, do: publish.()
    for _ <- pids, do: receive(do: (:done -> :ok))
    elapsed = System.monotonic_time() - started
    length(pids) * messages / System.convert_time_unit(elapsed, :native, :microsecond) * 1.0e6
  end

  defp format_rate(rate) when rate >= 1.0e6,
    do: String.pad_leading(:erlang.float_to_binary(rate / 1.0e6, decimals: 2) <> " M", 9)

  defp format_rate(rate),
    do: String.pad_leading(:erlang.float_to_binary(rate / 1.0e3, decimals: 1) <> " k", 9)

  defp ratio(rate, base), do: :erlang.float_to_binary(rate / base, decimals: 2) <> "x"

  defp machine do
    "#{System.schedulers_online()} schedulers, OTP #{System.otp_release()}, " <>
      "Elixir #{System.version()}, #{Date.utc_today()}"
  end
end

Demo.run()
