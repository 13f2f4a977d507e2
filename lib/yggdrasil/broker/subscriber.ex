defmodule Yggdrasil.Broker.Subscriber do
  @moduledoc false
  # The subscriber adapter of every broker adapter: one process per channel
  # (the Yggdrasil 6 shape), which subscribes the channel's name on the
  # namespace's shared client and turns what the client sends it into
  # `Manager.connected/disconnected` and `Publisher.notify/3`.
  #
  # Each event is sent to this one process, which decodes it with the
  # channel's transformer and fans it out through the engine from a process
  # environment: user transformers run here, the events of one channel keep
  # the broker's order, and the fan-out to N subscribers is one engine call
  # (the broker sends one message per event, not per subscriber).
  #
  # A broker's subscriber module is `use Yggdrasil.Broker.Subscriber,
  # broker: <its name>`; the process itself runs this module.
  use GenServer

  require Logger
  require Yggdrasil.Broker.Client

  alias Yggdrasil.Broker
  alias Yggdrasil.Broker.Client
  alias Yggdrasil.Channel
  alias Yggdrasil.Subscriber.Manager
  alias Yggdrasil.Subscriber.Publisher

  defmacro __using__(broker: broker) do
    quote do
      @behaviour Yggdrasil.Subscriber.Adapter

      @doc """
      Starts the process that subscribes `channel` on the
      `#{inspect(unquote(broker))}` client of its namespace.
      """
      @impl Yggdrasil.Subscriber.Adapter
      @spec start_link(Yggdrasil.Channel.t(), GenServer.options()) :: GenServer.on_start()
      def start_link(channel, options \\ []),
        do: Yggdrasil.Broker.Subscriber.start_link(unquote(broker), channel, options)

      @doc """
      `:ok` when `channel`'s name is valid for `#{inspect(unquote(broker))}`
      and its client can be opened, else `{:error, reason}`.
      """
      @impl Yggdrasil.Subscriber.Adapter
      @spec check_channel(Yggdrasil.Channel.t()) :: :ok | {:error, term()}
      def check_channel(channel),
        do: Yggdrasil.Broker.Subscriber.check_channel(unquote(broker), channel)
    end
  end

  @doc false
  def start_link(broker, %Channel{} = channel, options),
    do: GenServer.start_link(__MODULE__, {broker, channel}, options)

  @doc false
  def check_channel(broker, %Channel{name: name, namespace: namespace}) do
    with {:ok, %{client: client}} <- Broker.client(broker, namespace),
         do: Client.check_name(client, name)
  end

  @impl GenServer
  def init({broker, channel}) do
    # So that terminate/2 (the broker-side unsubscribe) also runs on a
    # supervisor shutdown.
    Process.flag(:trap_exit, true)
    {:ok, %{broker: broker, channel: channel, client: nil}, {:continue, :subscribe}}
  end

  @impl GenServer
  def handle_continue(:subscribe, %{broker: broker, channel: channel} = state) do
    with {:ok, %{client: client, owner: owner}} <- Broker.client(broker, channel.namespace),
         # The client closes with its owner: then start again on a new one.
         _ = Process.monitor(owner),
         :ok <- Client.subscribe(client, channel.name, self()) do
      {:noreply, %{state | client: client}}
    else
      {:error, reason} -> {:stop, {:broker_subscribe, reason}, state}
    end
  end

  @impl GenServer
  def handle_info({Client.tag(), :event, payload, metadata}, %{channel: channel} = state) do
    with {:error, reason} <- Publisher.notify(channel, payload, metadata) do
      Logger.warning(
        "Yggdrasil #{inspect(state.broker)}: dropped a message on #{inspect(channel.name)} " <>
          "that its transformer cannot decode: #{inspect(reason)}"
      )
    end

    {:noreply, state}
  end

  def handle_info({Client.tag(), :connected}, state) do
    Manager.connected(state.channel)
    {:noreply, state}
  end

  def handle_info({Client.tag(), :disconnected}, state) do
    Manager.disconnected(state.channel)
    {:noreply, state}
  end

  def handle_info({:DOWN, _ref, :process, _owner, reason}, state),
    do: {:stop, {:broker_client_closed, reason}, state}

  def handle_info(_other, state), do: {:noreply, state}

  @impl GenServer
  def terminate(_reason, %{client: client, channel: channel}) do
    # A killed process is unsubscribed by the client's monitor instead.
    if client, do: Client.unsubscribe(client, channel.name, self())
    Manager.disconnected(channel)
  end
end
