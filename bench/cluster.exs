# Cross-node scenario: one publisher on this node, subscribers on a peer
# node (OTP's :peer on loopback): deliveries per second, round trip, and
# distribution messages per publish. Standalone (OTP/Elixir only):
#
#   MIX_ENV=prod mix run bench/cluster.exs [--quick]
#   PHOENIX_PUBSUB_PATH=/path/to/phoenix_pubsub MIX_ENV=prod mix run bench/cluster.exs
#
# With PHOENIX_PUBSUB_PATH, Phoenix.PubSub (PG2 adapter) runs the same
# scenario, loaded by the harness's loader on both nodes.
#
# What is measured, per subscriber count N (1, 100, 10k):
#   deliveries/s  the publisher publishes M messages as fast as it can; the
#                 clock stops when all N subscribers on the peer got all M.
#   round trip    publish on this node -> one subscriber on the peer replies
#                 with a plain send; median and p99 of sequential pings,
#                 while the other N-1 subscribers also receive each ping.
#   dist msgs     per publish: messages the peer's Yggdrasil.Relay received
#                 (exact), and packets written on this node's distribution
#                 port (`:inet.getstat/2` send_cnt; includes the control
#                 traffic of the run, so it can only be slightly above).

Code.require_file("support/harness.exs", __DIR__)

defmodule ClusterBench do
  alias YggBench.Harness

  # {subscribers, messages, pings}
  @rounds_full [{1, 200_000, 2_000}, {100, 20_000, 1_000}, {10_000, 200, 100}]
  @rounds_quick [{1, 20_000, 300}, {100, 2_000, 200}, {10_000, 20, 20}]

  def run(argv) do
    quick? = "--quick" in argv
    rounds = if quick?, do: @rounds_quick, else: @rounds_full
    reps = if quick?, do: 1, else: 3

    distributed!()
    phoenix = YggBench.Comparators.load_phoenix()
    {peer, node} = start_peer()
    load_remote_module(node)

    comparators = [:yggdrasil] ++ if(match?({:ok, _}, phoenix), do: [:phoenix_pubsub], else: [])

    if :phoenix_pubsub in comparators, do: start_phoenix([node(), node])

    IO.puts("""
    == cross-node: 1 publisher on #{node()}, subscribers on #{node}
       #{System.schedulers_online()} schedulers, OTP #{System.otp_release()}, Elixir #{System.version()}
       Phoenix.PubSub: #{phoenix_note(phoenix)}
    """)

    IO.puts(
      "| comparator | N subs | msgs | deliveries/s | publishes/s | RTT p50 µs | RTT p99 µs | dist msgs/publish (relay) | dist packets/publish (port) |"
    )

    IO.puts("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    # Comparators interleaved, `reps` times; medians reported.
    for {n, m, pings} <- rounds do
      results =
        for _rep <- 1..reps, comparator <- comparators, reduce: %{} do
          acc ->
            result = scenario(comparator, node, n, m, pings)
            Map.update(acc, comparator, [result], &[result | &1])
        end

      for comparator <- comparators do
        r = summary(results[comparator])

        IO.puts(
          "| #{comparator} | #{n} | #{m} | #{Harness.fmt(r.deliveries_per_s, :per_s)} | " <>
            "#{Harness.fmt(r.publishes_per_s, :per_s)} | " <>
            "#{r.rtt_p50} | #{r.rtt_p99} | #{r.relay_per_publish} | #{r.packets_per_publish} |"
        )
      end
    end

    :peer.stop(peer)
  end

  # -- one scenario ---------------------------------------------------------

  defp scenario(comparator, node, n, m, pings) do
    id = System.unique_integer([:positive])
    target = target(comparator, id)
    me = self()

    subs =
      :erpc.call(node, ClusterBench.Remote, :start_subscribers, [comparator, target, n, m, me])

    # Throughput.
    relay_before = relayed(node)
    packets_before = dist_packets(node)
    t0 = System.monotonic_time(:microsecond)
    for i <- 1..m, do: :ok = publish(comparator, target, i)
    t_pub = System.monotonic_time(:microsecond)

    receive do
      {:all_done, ^subs} -> :ok
    after
      120_000 -> raise "#{comparator} N=#{n}: subscribers did not get all #{m} messages"
    end

    t1 = System.monotonic_time(:microsecond)
    packets = dist_packets(node) - packets_before
    relay = relayed(node) - relay_before

    # Round trip: the first subscriber answers {:ping, from, i}.
    samples =
      for i <- 1..pings do
        t = System.monotonic_time(:microsecond)
        :ok = publish(comparator, target, {:ping, me, i})

        receive do
          {:pong, ^i} -> System.monotonic_time(:microsecond) - t
        after
          10_000 -> raise "no pong"
        end
      end

    :ok = :erpc.call(node, ClusterBench.Remote, :stop_subscribers, [subs])

    %{
      comparator: comparator,
      published: m,
      deliveries_per_s: m * n / max(t1 - t0, 1) * 1_000_000,
      publishes_per_s: m / max(t_pub - t0, 1) * 1_000_000,
      rtt: samples,
      relayed: relay,
      packets: packets
    }
  end

  defp summary([%{comparator: comparator} | _] = results) do
    sorted = results |> Enum.flat_map(& &1.rtt) |> Enum.sort() |> List.to_tuple()
    published = results |> Enum.map(& &1.published) |> Enum.sum()
    relayed = results |> Enum.map(& &1.relayed) |> Enum.sum()
    packets = results |> Enum.map(& &1.packets) |> Enum.sum()

    %{
      deliveries_per_s: YggBench.Stats.median(Enum.map(results, & &1.deliveries_per_s)),
      publishes_per_s: YggBench.Stats.median(Enum.map(results, & &1.publishes_per_s)),
      rtt_p50: elem(sorted, div(tuple_size(sorted), 2)),
      rtt_p99: elem(sorted, min(tuple_size(sorted) - 1, div(tuple_size(sorted) * 99, 100))),
      relay_per_publish:
        if(comparator == :yggdrasil, do: Float.round(relayed / published, 3), else: "n/a"),
      packets_per_publish: Float.round(packets / published, 3)
    }
  end

  defp target(:yggdrasil, id) do
    {:ok, channel} = Yggdrasil.gen_channel(name: {:cluster_bench, id})
    channel
  end

  # Phoenix.PubSub delivers the same tuple Yggdrasil does, so both copy the
  # same term into every subscriber.
  defp target(:phoenix_pubsub, id), do: {"cluster_bench:#{id}", target(:yggdrasil, id)}

  defp publish(:yggdrasil, channel, message), do: Yggdrasil.publish(channel, message)

  defp publish(:phoenix_pubsub, {topic, channel}, message) do
    apply(Phoenix.PubSub, :broadcast, [ClusterBench.PubSub, topic, {:Y_EVENT, channel, message}])
  end

  defp relayed(node), do: Yggdrasil.Relay.stats(node).relayed

  defp dist_packets(node) do
    with {_, port} when is_port(port) <- List.keyfind(:erlang.system_info(:dist_ctrl), node, 0),
         {:ok, [send_cnt: count]} <- :inet.getstat(port, [:send_cnt]) do
      count
    else
      _ -> 0
    end
  end

  # -- nodes ----------------------------------------------------------------

  defp distributed! do
    unless Node.alive?() do
      epmd = System.find_executable("epmd")
      if epmd, do: System.cmd(epmd, ["-daemon"])
      name = :"ygg_bench_#{System.pid()}@127.0.0.1"

      case :net_kernel.start([name, :longnames]) do
        {:ok, _} ->
          :ok

        {:error, reason} ->
          raise "distribution did not start (#{inspect(reason)}); is epmd running?"
      end
    end
  end

  # The peer gets this node's code path, Phoenix.PubSub's compiled directory
  # included.
  defp start_peer do
    args = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
    name = :"ygg_bench_peer_#{System.pid()}"

    {:ok, peer, node} =
      :peer.start_link(%{name: name, host: ~c"127.0.0.1", longnames: true, args: args})

    {:ok, _} = :erpc.call(node, :application, :ensure_all_started, [:yggdrasil])
    Harness.wait_until(fn -> node in Yggdrasil.Relay.remote_nodes() end)
    Harness.wait_until(fn -> node() in :erpc.call(node, Yggdrasil.Relay, :remote_nodes, []) end)
    {peer, node}
  end

  # The peer runs code of this script: compile it here, load it there.
  defp load_remote_module(node) do
    [{module, binary}] = Code.compile_quoted(remote_module())
    {:module, ^module} = :erpc.call(node, :code, :load_binary, [module, ~c"nofile", binary])
  end

  defp remote_module do
    quote do
      defmodule ClusterBench.Remote do
        @moduledoc false

        def start_subscribers(comparator, target, n, m, origin) do
          collector = spawn(fn -> collect(n, origin, nil) end)
          me = self()

          pids =
            for i <- 1..n do
              spawn(fn ->
                subscribe(comparator, target)
                send(me, :ready)
                loop(0, m, collector, i == 1)
              end)
            end

          for _ <- pids, do: receive(do: (:ready -> :ok))
          send(collector, {:pids, pids})
          collector
        end

        # Unlinked, so it outlives the :erpc call.
        def start_phoenix do
          me = self()

          spawn(fn ->
            case :pg.start(Phoenix.PubSub) do
              {:ok, _} -> :ok
              {:error, {:already_started, _}} -> :ok
            end

            {:ok, _} =
              apply(Phoenix.PubSub.Supervisor, :start_link, [[name: ClusterBench.PubSub]])

            send(me, :phoenix_started)
            Process.sleep(:infinity)
          end)

          receive do
            :phoenix_started -> :ok
          after
            10_000 -> {:error, :phoenix_not_started}
          end
        end

        def stop_subscribers(collector) do
          send(collector, :stop)
          :ok
        end

        defp subscribe(:yggdrasil, channel), do: :ok = Yggdrasil.subscribe(channel)

        defp subscribe(:phoenix_pubsub, {topic, _channel}),
          do: :ok = apply(Phoenix.PubSub, :subscribe, [ClusterBench.PubSub, topic])

        defp collect(0, origin, pids) do
          send(origin, {:all_done, self()})
          collect(:reported, origin, pids)
        end

        defp collect(left, origin, pids) do
          receive do
            {:pids, pids} ->
              collect(left, origin, pids)

            :done ->
              collect(left - 1, origin, pids)

            :stop ->
              for pid <- pids || [], do: Process.exit(pid, :kill)
          end
        end

        defp loop(count, m, collector, echo?) do
          receive do
            message ->
              case payload(message) do
                {:ping, from, i} ->
                  if echo?, do: send(from, {:pong, i})
                  loop(count, m, collector, echo?)

                i when is_integer(i) ->
                  if count + 1 == m, do: send(collector, :done)
                  loop(count + 1, m, collector, echo?)

                _ ->
                  loop(count, m, collector, echo?)
              end
          end
        end

        defp payload({:Y_EVENT, _channel, payload}), do: payload
        defp payload(other), do: other
      end
    end
  end

  # -- Phoenix.PubSub -------------------------------------------------------

  defp phoenix_note({:ok, version}), do: "#{version} (PG2 adapter, pool_size 1)"
  defp phoenix_note({:skipped, why}), do: "skipped: #{why}"

  # What Phoenix.PubSub.Application and `{Phoenix.PubSub, name: ...}` start,
  # on both nodes (ClusterBench.Remote is loaded on both).
  defp start_phoenix(nodes) do
    for node <- nodes, do: :ok = :erpc.call(node, ClusterBench.Remote, :start_phoenix, [])
    group = Module.concat(ClusterBench.PubSub, "Adapter")
    Harness.wait_until(fn -> length(:pg.get_members(Phoenix.PubSub, group)) == length(nodes) end)
  end
end

System.argv() |> ClusterBench.run()
