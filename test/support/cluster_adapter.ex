defmodule Yggdrasil.ClusterMem.Broker do
  @moduledoc false
  # A tiny in-memory "broker" for the cluster tests: the message source of
  # the `:cluster_mem` adapter, living on one node. It can be switched
  # down/up to make the adapter report disconnections.
  use GenServer

  def start do
    case GenServer.start(__MODULE__, nil, name: __MODULE__) do
      {:ok, pid} -> {:ok, pid}
      {:error, {:already_started, pid}} -> {:ok, pid}
    end
  end

  # Registers the caller for `name`; returns whether the broker is up.
  def subscribe(name), do: GenServer.call(__MODULE__, {:subscribe, name, self()})

  def publish(name, message, metadata),
    do: GenServer.call(__MODULE__, {:publish, name, message, metadata})

  def set_up(up?), do: GenServer.call(__MODULE__, {:set_up, up?})

  @impl GenServer
  def init(_), do: {:ok, %{up: true, subscribers: %{}}}

  @impl GenServer
  def handle_call({:subscribe, name, pid}, _from, state) do
    Process.monitor(pid)
    {:reply, state.up, %{state | subscribers: Map.put(state.subscribers, pid, name)}}
  end

  def handle_call({:publish, name, message, metadata}, _from, state) do
    if state.up do
      for {pid, ^name} <- state.subscribers, do: send(pid, {:cluster_mem, message, metadata})
      {:reply, :ok, state}
    else
      {:reply, {:error, :broker_down}, state}
    end
  end

  def handle_call({:set_up, up?}, _from, state) do
    for {pid, _} <- state.subscribers, do: send(pid, {:cluster_mem_up, up?})
    {:reply, :ok, %{state | up: up?}}
  end

  @impl GenServer
  def handle_info({:DOWN, _, :process, pid, _}, state),
    do: {:noreply, %{state | subscribers: Map.delete(state.subscribers, pid)}}
end

defmodule Yggdrasil.Adapter.ClusterMem do
  @moduledoc false
  # A non-native adapter for the bridge tests, registered on one node only.
  use Yggdrasil.Adapter, name: :cluster_mem
end

defmodule Yggdrasil.Subscriber.Adapter.ClusterMem do
  @moduledoc false
  use Yggdrasil.Subscriber.Adapter
  use GenServer

  alias Yggdrasil.ClusterMem.Broker
  alias Yggdrasil.Subscriber.Manager
  alias Yggdrasil.Subscriber.Publisher

  @impl GenServer
  def init(%{channel: channel}), do: {:ok, channel, {:continue, :connect}}

  @impl GenServer
  def handle_continue(:connect, channel) do
    if Broker.subscribe(channel.name), do: Manager.connected(channel)
    {:noreply, channel}
  end

  @impl GenServer
  def handle_info({:cluster_mem, message, metadata}, channel) do
    Publisher.notify(channel, message, metadata)
    {:noreply, channel}
  end

  def handle_info({:cluster_mem_up, true}, channel) do
    Manager.connected(channel)
    {:noreply, channel}
  end

  def handle_info({:cluster_mem_up, false}, channel) do
    Manager.disconnected(channel)
    {:noreply, channel}
  end
end

defmodule Yggdrasil.Publisher.Adapter.ClusterMem do
  @moduledoc false
  use Yggdrasil.Publisher.Adapter
  use GenServer

  @impl Yggdrasil.Publisher.Adapter
  def publish(_publisher, %Yggdrasil.Channel{} = channel, message, options) do
    with {:ok, encoded} <- Yggdrasil.Transformer.encode(channel, message) do
      Yggdrasil.ClusterMem.Broker.publish(channel.name, encoded, options[:metadata])
    end
  end

  @impl GenServer
  def init(namespace), do: {:ok, namespace}
end
