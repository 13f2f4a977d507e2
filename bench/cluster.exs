# Cross-node scenario: one publisher on this node, subscribers on a peer
# node (OTP's :peer on loopback): deliveries per second and distribution
# messages per publish. Standalone (OTP/Elixir only):
#
#   MIX_ENV=prod mix run bench/cluster.exs [--quick]
#
# What is measured, per subscriber count N (1, 100, 10k):
#   deliveries/s  the publisher publishes M messages as fast as it can; the
#                 clock stops when all N subscribers on the peer got all M.
#   dist msgs     per publish: messages the peer's Yggdrasil.Relay received
#                 (exact), and packets written on this node's distribution
#                 port (`:inet.getstat/2` send_cnt; includes the control
#                 traffic of the run, so it can only be slightly above).

Code.require_file("support/harness.exs", __DIR__)

defmodule ClusterBench do
  alias YggBench.Harness

  # {subscribers, messages}
  @rounds_full [{1, 200_000}, {100, 20_000}, {10_000, 200}]
  @rounds_quick [{1, 20_000}, {100, 2_000}, {10_000, 20}]

  def run(argv) do
    quick? = "--quick" in argv
    rounds = if quick?, do: @rounds_quick, else: @rounds_full
    reps = if quick?, do: 1, else: 3

    distributed!()
    {peer, node} = start_peer()
    load_remote_module(node)

    IO.puts("""
    == cross-node: 1 publisher on #{node()}, subscribers on #{node}
       #{System.schedulers_online()} schedulers, OTP #{System.otp_release()}, Elixir #{System.version()}
    """)

    IO.puts(
      "| N subs | msgs | deliveries/s | publishes/s | dist msgs/publish (relay) | dist packets/publish (port) |"
    )

    IO.puts("|---:|---:|---:|---:|---:|---:|")

    # `reps` times each; medians of the rates, totals of the messages.
    for {n, m} <- rounds do
      r = summary(for _rep <- 1..reps, do: scenario(node, n, m))

      IO.puts(
        "| #{n} | #{m} | #{Harness.fmt(r.deliveries_per_s, :per_s)} | " <>
          "#{Harness.fmt(r.publishes_per_s, :per_s)} | " <>
          "#{r.relay_per_publish} | #{r.packets_per_publish} |"
      )
    end

    :peer.stop(peer)
  end

  # -- one scenario ---------------------------------------------------------

  defp scenario(node, n, m) do
    {:ok, channel} = Yggdrasil.gen_channel(name: {:cluster_bench, System.unique_integer()})
    subs = :erpc.call(node, ClusterBench.Remote, :start_subscribers, [channel, n, m, self()])
    relay_before = relayed(node)
    packets_before = dist_packets(node)
    t0 = System.monotonic_time(:microsecond)
    for i <- 1..m, do: :ok = Yggdrasil.publish(channel, i)
    t_pub = System.monotonic_time(:microsecond)

    receive do
      {:all_done, ^subs} -> :ok
    after
      120_000 -> raise "N=#{n}: subscribers did not get all #{m} messages"
    end

    t1 = System.monotonic_time(:microsecond)
    packets = dist_packets(node) - packets_before
    relay = relayed(node) - relay_before
    :ok = :erpc.call(node, ClusterBench.Remote, :stop_subscribers, [subs])

    %{
      published: m,
      deliveries_per_s: m * n / max(t1 - t0, 1) * 1_000_000,
      publishes_per_s: m / max(t_pub - t0, 1) * 1_000_000,
      relayed: relay,
      packets: packets
    }
  end

  defp summary(results) do
    published = results |> Enum.map(& &1.published) |> Enum.sum()
    total = fn key -> results |> Enum.map(&Map.fetch!(&1, key)) |> Enum.sum() end

    %{
      deliveries_per_s: YggBench.Stats.median(Enum.map(results, & &1.deliveries_per_s)),
      publishes_per_s: YggBench.Stats.median(Enum.map(results, & &1.publishes_per_s)),
      relay_per_publish: Float.round(total.(:relayed) / published, 3),
      packets_per_publish: Float.round(total.(:packets) / published, 3)
    }
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

  # The peer gets this node's code path.
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

        def start_subscribers(channel, n, m, origin) do
          collector = spawn(fn -> collect(n, origin, nil) end)
          me = self()

          pids =
            for _ <- 1..n do
              spawn(fn ->
                :ok = Yggdrasil.subscribe(channel)
                send(me, :ready)
                loop(0, m, collector)
              end)
            end

          for _ <- pids, do: receive(do: (:ready -> :ok))
          send(collector, {:pids, pids})
          collector
        end

        def stop_subscribers(collector) do
          send(collector, :stop)
          :ok
        end

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

        defp loop(count, m, collector) do
          receive do
            {:Y_EVENT, _channel, i} when is_integer(i) ->
              if count + 1 == m, do: send(collector, :done)
              loop(count + 1, m, collector)

            _ ->
              loop(count, m, collector)
          end
        end
      end
    end
  end
end

System.argv() |> ClusterBench.run()
