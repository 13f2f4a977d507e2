defmodule Yggdrasil.Test.Cluster do
  @moduledoc false
  # Real nodes on loopback for the cluster tests: makes this node
  # distributed (starting epmd if needed) and starts peers with OTP's
  # `:peer`, carrying this node's code path so they load the same build
  # (the NIF is found through `:code.priv_dir(:yggdrasil)`).
  #
  # The functions that run ON a peer (`start_forwarder/3`, ...) must live
  # here, in a compiled module: test files are compiled in memory and do
  # not exist on the peers.

  import ExUnit.Assertions
  import Yggdrasil.Test.Helpers

  @host ~c"127.0.0.1"

  @doc """
  Makes this node distributed. Returns `true` when it did (the caller
  should then `stop_distribution/0`), `false` when it already was.
  Raises with an explanation when distribution cannot start.
  """
  def ensure_distributed! do
    if Node.alive?() do
      false
    else
      epmd = ensure_epmd()
      name = :"ygg_test_#{System.unique_integer([:positive])}_#{System.pid()}@127.0.0.1"

      case :net_kernel.start([name, :longnames]) do
        {:ok, _} ->
          true

        {:error, reason} ->
          flunk("""
          Erlang distribution could not start (#{inspect(reason)}), so the cluster tests cannot run.
          epmd: #{epmd}. Start it with `epmd -daemon` and check that 127.0.0.1 is reachable.
          """)
      end
    end
  end

  def stop_distribution, do: :net_kernel.stop()

  defp ensure_epmd do
    case System.find_executable("epmd") || erts_epmd() do
      nil ->
        "not found on PATH nor in the Erlang installation"

      epmd ->
        # `-daemon` returns at once and is a no-op when epmd already runs.
        case System.cmd(epmd, ["-daemon"], stderr_to_stdout: true) do
          {_, 0} -> "#{epmd} -daemon ran"
          {out, status} -> "#{epmd} -daemon exited with #{status}: #{out}"
        end
    end
  end

  defp erts_epmd do
    Path.wildcard(Path.join([to_string(:code.root_dir()), "erts-*", "bin", "epmd"]))
    |> List.first()
  end

  @doc "Starts a peer node running `:yggdrasil`; it stops with the caller."
  def start_peer!(name \\ nil) do
    name = name || :"ygg_peer_#{System.unique_integer([:positive])}_#{System.pid()}"
    args = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])

    # Same naming mode as this node (it may have been started with --sname).
    {host, longnames?} =
      case :net_kernel.longnames() do
        false -> {node() |> Atom.to_string() |> String.split("@") |> List.last(), false}
        _ -> {@host, true}
      end

    {:ok, peer, node} =
      :peer.start_link(%{name: name, host: to_charlist(host), longnames: longnames?, args: args})

    {:ok, _} = :erpc.call(node, :application, :ensure_all_started, [:yggdrasil])
    # The peer's log goes to this node's terminal: keep it for real errors.
    :ok = :erpc.call(node, Logger, :configure, [[level: :error]])
    {peer, node}
  end

  @doc "Stops a peer; `:ok` also when it is already gone."
  def stop_peer(peer) do
    :peer.stop(peer)
  catch
    :exit, _ -> :ok
  end

  @doc "Connects `nodes` to each other, then waits until each relays to all the others."
  def wait_relays(nodes) do
    # Peers know only this node at first; `global` would connect them to
    # each other too, but in its own time, which on a loaded machine once
    # outlasted the wait below (a full suite run, seed 794565).
    for a <- nodes, b <- nodes, a < b, do: true = :erpc.call(a, :net_kernel, :connect_node, [b])

    for node <- nodes do
      others = Enum.sort(nodes -- [node])

      eventually(
        fn -> remote_nodes(node) == others end,
        "relays of #{inspect(node)} to be #{inspect(others)}"
      )
    end

    :ok
  end

  def remote_nodes(node), do: :erpc.call(node, Yggdrasil.Relay, :remote_nodes, [])

  @doc """
  Starts, on `node`, a process subscribed to `channel` (`times` subscribe
  calls) that sends `{tag, message}` to `target` for every message it gets.
  Returns its pid once subscribed.
  """
  def start_forwarder(node, channel, target, tag, times \\ 1) do
    :erpc.call(node, __MODULE__, :spawn_forwarder, [channel, target, tag, times])
  end

  @doc false
  def spawn_forwarder(channel, target, tag, times) do
    caller = self()

    pid =
      spawn(fn ->
        results = for _ <- 1..times, do: Yggdrasil.subscribe(channel)
        send(caller, {:subscribed, self(), results})
        forward(target, tag)
      end)

    receive do
      {:subscribed, ^pid, results} ->
        true = Enum.all?(results, &(&1 == :ok))
        pid
    end
  end

  defp forward(target, tag) do
    receive do
      :stop ->
        :ok

      message ->
        send(target, {tag, message})
        forward(target, tag)
    end
  end

  @doc """
  Starts, on `node`, a process publishing `from..to` on `channel` one after
  the other; it sends `{:published, tag, n}` to `target` at each `every`
  and `{:done, tag, results}` (the distinct return values) at the end.
  """
  def start_publisher(node, channel, range, target, tag, every \\ 100) do
    :erpc.call(node, __MODULE__, :spawn_publisher, [channel, range, target, tag, every])
  end

  @doc false
  def spawn_publisher(channel, range, target, tag, every) do
    spawn(fn ->
      results =
        Enum.reduce(range, MapSet.new(), fn n, results ->
          result = Yggdrasil.publish(channel, n)
          if rem(n, every) == 0, do: send(target, {:published, tag, n})
          MapSet.put(results, result)
        end)

      send(target, {:done, tag, MapSet.to_list(results)})
    end)
  end

  @doc "Registers the `:cluster_mem` test adapter on `node` (and starts its broker)."
  def register_cluster_mem(node) do
    {:ok, _} = :erpc.call(node, Yggdrasil.ClusterMem.Broker, :start, [])
    :ok = :erpc.call(node, Yggdrasil.Adapter.ClusterMem, :register, [])
  end
end
