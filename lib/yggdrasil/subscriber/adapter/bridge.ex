defmodule Yggdrasil.Subscriber.Adapter.Bridge do
  @moduledoc """
  Subscriber adapter of `:bridge` channels (see `Yggdrasil.Adapter.Bridge`).

  One runs per bridge channel on the subscribing node while it has
  subscribers. It starts a `Yggdrasil.Subscriber.Adapter.Bridge.Remote` on a
  node where the wrapped channel's adapter runs (under that node's
  `Yggdrasil.Subscriber.Adapters` supervisor), which subscribes there and
  sends back everything it receives, one distribution message per event.
  Both monitor each other: the remote one stops when this one ends (last
  local subscriber gone), and this one reports the channel disconnected when
  the remote one or its node goes away, then tries again (backoff up to one
  second) until a node with the adapter answers.
  """
  use Yggdrasil.Subscriber.Adapter
  use GenServer

  require Logger

  alias Yggdrasil.Adapter.Bridge
  alias Yggdrasil.Channel
  alias Yggdrasil.Subscriber.Adapter.Bridge.Remote
  alias Yggdrasil.Subscriber.Manager
  alias Yggdrasil.Subscriber.Publisher

  @tag :"$yggdrasil_bridge"
  @min_backoff 50
  @max_backoff 1_000
  # Below the 5 s the Generator gives this process to stop.
  @stop_timeout 2_000

  @doc """
  Refuses a bridge whose name is not a channel, or whose wrapped channel
  its adapter refuses. That adapter is asked on the node that runs it (its
  client lives there, not here); when no node can be asked now, the bridge
  is accepted and its retries reach the adapter later.
  """
  @impl Yggdrasil.Subscriber.Adapter
  def check_channel(%Channel{name: name}) do
    with {:ok, remote} <- Bridge.remote_channel(name) do
      case Yggdrasil.Registry.get_adapter_node(remote.adapter) do
        {:ok, node} ->
          node |> Bridge.rpc(Yggdrasil.Subscriber.Adapter, :check, [remote]) |> asked(node)

        {:error, _} ->
          :ok
      end
    end
  end

  defp asked({:error, {failure, node, _}}, node)
       when failure in [:erpc, :remote_exception, :remote_exit, :remote_throw],
       do: :ok

  defp asked(answer, _node), do: answer

  @impl GenServer
  def init(%{channel: %Channel{} = bridge}) do
    state = %{
      bridge: bridge,
      remote: nil,
      monitor: nil,
      connected: false,
      backoff: @min_backoff,
      failures: 0
    }

    {:ok, state, {:continue, :connect}}
  end

  @impl GenServer
  def handle_continue(:connect, state), do: {:noreply, connect(state)}

  @impl GenServer
  def handle_info(:connect, %{remote: nil} = state), do: {:noreply, connect(state)}
  def handle_info(:connect, state), do: {:noreply, state}

  # Only messages of the current remote process count: a previous one may
  # still have had messages in flight.
  def handle_info({@tag, pid, message}, %{remote: pid} = state),
    do: {:noreply, forwarded(message, state)}

  def handle_info({@tag, _stale, _message}, state), do: {:noreply, state}

  def handle_info({:DOWN, ref, :process, _pid, reason}, %{monitor: ref} = state) do
    Logger.debug(fn ->
      "Yggdrasil bridge #{inspect(state.bridge.name)} lost: #{inspect(reason)}"
    end)

    state = set_connected(%{state | remote: nil, monitor: nil}, false)
    {:noreply, retry(state)}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl GenServer
  def terminate(_reason, %{remote: remote, monitor: monitor}) when is_pid(remote) do
    Process.demonitor(monitor, [:flush])
    GenServer.stop(remote, :normal, @stop_timeout)
  catch
    # Already gone, or its node is.
    :exit, _ -> :ok
  end

  def terminate(_reason, _state), do: :ok

  defp forwarded({:Y_CONNECTED, _}, state), do: set_connected(state, true)
  defp forwarded({:Y_DISCONNECTED, _}, state), do: set_connected(state, false)

  defp forwarded({:Y_EVENT, %Channel{metadata: metadata}, message}, state) do
    Publisher.notify(state.bridge, message, metadata)
    state
  end

  defp forwarded(_other, state), do: state

  defp set_connected(%{connected: same} = state, same), do: state

  defp set_connected(state, true) do
    Manager.connected(state.bridge)
    %{state | connected: true, backoff: @min_backoff, failures: 0}
  end

  defp set_connected(state, false) do
    Manager.disconnected(state.bridge)
    %{state | connected: false}
  end

  defp connect(state) do
    with {:ok, {_local, remote}} <- Bridge.split_channels(state.bridge),
         {:ok, node} <- Yggdrasil.Registry.get_adapter_node(remote.adapter),
         {:ok, pid} <- start_remote(node, remote) do
      # The backoff starts again once the remote end reports connected: one
      # that starts and then fails keeps backing off.
      %{state | remote: pid, monitor: Process.monitor(pid)}
    else
      {:error, reason} ->
        if state.failures == 0 do
          Logger.warning(
            "Yggdrasil bridge #{inspect(state.bridge.name)}: cannot reach the remote channel " <>
              "(#{inspect(reason)}); retrying"
          )
        end

        retry(%{state | failures: state.failures + 1})
    end
  end

  defp retry(state) do
    Process.send_after(self(), :connect, state.backoff)
    %{state | backoff: min(state.backoff * 2, @max_backoff)}
  end

  defp start_remote(node, remote) do
    spec = %{
      id: Remote,
      start: {Remote, :start_link, [self(), remote]},
      restart: :temporary
    }

    case DynamicSupervisor.start_child({Yggdrasil.Subscriber.Adapters, node}, spec) do
      {:ok, pid} -> {:ok, pid}
      {:error, reason} -> {:error, {:remote_not_started, node, reason}}
      other -> {:error, {:remote_not_started, node, other}}
    end
  catch
    :exit, reason -> {:error, {:remote_not_started, node, reason}}
  end
end

defmodule Yggdrasil.Subscriber.Adapter.Bridge.Remote do
  @moduledoc false
  # Runs on the node where a bridged channel's adapter lives: subscribes to
  # the channel there and sends each `:Y_CONNECTED`, `:Y_DISCONNECTED` and
  # `:Y_EVENT` to the bridge subscriber adapter (`owner`) on the other node.
  # Stops when the owner goes away (local subscription ended, owner crashed,
  # or the connection to its node dropped).
  use GenServer

  @tag :"$yggdrasil_bridge"

  def start_link(owner, %Yggdrasil.Channel{} = remote) when is_pid(owner) do
    GenServer.start_link(__MODULE__, {owner, remote})
  end

  @impl GenServer
  def init({owner, remote}) do
    monitor = Process.monitor(owner)
    # Not from init/1: this runs inside the node's adapter supervisor, and
    # subscribing may need that supervisor to start the adapter's process.
    {:ok, %{owner: owner, monitor: monitor, remote: remote}, {:continue, :subscribe}}
  end

  @impl GenServer
  def handle_continue(:subscribe, state) do
    case Yggdrasil.subscribe(state.remote) do
      :ok -> {:noreply, state}
      {:error, reason} -> {:stop, {:subscribe_failed, reason}, state}
    end
  end

  @impl GenServer
  def handle_info({:DOWN, ref, :process, _, _}, %{monitor: ref} = state),
    do: {:stop, :normal, state}

  def handle_info({tag, _channel} = message, state)
      when tag in [:Y_CONNECTED, :Y_DISCONNECTED] do
    send(state.owner, {@tag, self(), message})
    {:noreply, state}
  end

  def handle_info({:Y_EVENT, _channel, _message} = message, state) do
    send(state.owner, {@tag, self(), message})
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl GenServer
  def terminate({:subscribe_failed, _}, _state), do: :ok

  def terminate(_reason, state) do
    # Stop the adapter's own subscriber process now rather than when the
    # engine notices this process is gone.
    Yggdrasil.unsubscribe(state.remote)
  end
end
