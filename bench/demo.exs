# The main job (`make demo`): subscribes processes, publishes, shows what
# arrives, then a quick throughput comparison against the baselines, all
# measured side by side in this run.
Code.require_file("support/harness.exs", __DIR__)

defmodule Demo do
  alias Yggdrasil.Channel
  alias YggBench.{Comparators, Group, Harness, Loops}

  def run do
    IO.puts("== native Yggdrasil demo (#{machine()})\n")
    show_messages()
    show_json()
    IO.puts("\n== throughput: deliveries per second, median of 5 interleaved rounds")
    IO.puts("   (every comparator sends {:Y_EVENT, channel, payload} to the same processes)\n")
    Comparators.start_infra()
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

  # -- 2. throughput, with the bench's comparators and subscriber groups ----

  defp throughput(n, messages) do
    comps = Comparators.all()
    target = Comparators.target(:demo, n)
    group = Group.start(List.duplicate(target, n), :count, &Comparators.subscribe_all(comps, &1))
    keys = Map.new(comps, &{&1, Comparators.pub_key(&1, target, group.pids)})

    rates =
      Harness.interleave(5, comps, fn c, _rep ->
        publish = fn -> Loops.repeat(c, keys[c], "payload", messages) end
        {total, _, _} = Group.round(group, messages, publish)
        n * messages * 1.0e9 / total
      end)

    Group.stop(group)
    median = Map.new(rates, fn {c, values} -> {c, YggBench.Stats.median(values)} end)
    IO.puts("   #{n} subscriber(s) x #{messages} messages")

    for c <- comps do
      IO.puts(
        "     #{String.pad_trailing("#{c}", 10)} #{String.pad_leading(Harness.fmt(median[c], :per_s), 10)}" <>
          "   #{Harness.fmt_ratio(median[c] / median.raw)} of raw" <>
          "   #{Harness.fmt_ratio(median[c] / median.registry)} of Registry"
      )
    end

    IO.puts("")
  end

  defp machine do
    "#{System.schedulers_online()} schedulers, OTP #{System.otp_release()}, " <>
      "Elixir #{System.version()}, #{Date.utc_today()}"
  end
end

Demo.run()
