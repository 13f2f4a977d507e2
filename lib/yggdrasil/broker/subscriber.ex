defmodule Yggdrasil.Broker.Subscriber do
  @moduledoc false
  # The subscriber adapter of every broker adapter: one process per channel
  # (the Yggdrasil 6 shape), which subscribes the channel's name on the
  # namespace's shared client and turns what the client sends it into
  # `Manager.connected/disconnected` and `Publisher.notify/3`.
  #
  # When the engine can do what this process would (the `:default` or
  # `:json` transformer and the default backend), the process subscribes
  # with a route: the NIF's delivery thread decodes each event and fans it
  # out to the channel's subscribers itself, `{:Y_CONNECTED, _}` and
  # `{:Y_DISCONNECTED, _}` included, with no process in between
  # (`native/yggdrasil_nif/src/broker/direct.rs`). This process then only
  # holds the subscription (and logs events the route could not decode).
  #
  # Otherwise each event is sent to this process, which decodes it with the
  # channel's transformer and fans it out through the engine: user
  # transformers run here and the events of one channel keep the broker's
  # order. It paces its fan-outs as the delivery thread does
  # (`Yggdrasil.Broker.Pacer`). Its mailbox is bounded: past `@max_backlog`
  # events waiting, or more than `@max_lag_us` of work at the pace it
  # measures itself, the waiting events are dropped and the subscribers
  # told, with `{:Y_DISCONNECTED, _}` then `{:Y_CONNECTED, _}` (as the
  # NIF's outbox does for routes: `docs/guarantees.md`).
  #
  # A broker's subscriber module is `use Yggdrasil.Broker.Subscriber,
  # broker: <its name>`; the process itself runs this module.
  use GenServer

  require Logger
  require Yggdrasil.Broker.Client

  alias Yggdrasil.Broker
  alias Yggdrasil.Broker.Client
  alias Yggdrasil.Broker.Pacer
  alias Yggdrasil.Channel
  alias Yggdrasil.Engine
  alias Yggdrasil.Route
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
    # Its mailbox may hold up to 10,000 events under a flood: off heap, they
    # are not copied into (and do not grow) this process's heap while they wait.
    Process.flag(:message_queue_data, :off_heap)

    state = %{
      broker: broker,
      channel: channel,
      client: nil,
      connected: false,
      cost_us: 0,
      # Pacing (`Yggdrasil.Broker.Pacer`), as the delivery thread does
      # (`native/yggdrasil_nif/src/broker/pace.rs`, whose budget and wait
      # these are): the channel's engine key, messages sent since the last
      # pace, in how many events, and how many paces so far.
      pace_limits: Client.pace_limits(),
      key: Channel.key(channel),
      sent: 0,
      events: 0,
      paces: 0
    }

    {:ok, state, {:continue, :subscribe}}
  end

  @impl GenServer
  def handle_continue(:subscribe, %{broker: broker, channel: channel} = state) do
    with {:ok, %{client: client, owner: owner}} <- Broker.client(broker, channel.namespace),
         # The client closes with its owner: then start again on a new one.
         _ = Process.monitor(owner),
         :ok <- Client.subscribe(client, channel.name, self(), route(channel)) do
      {:noreply, %{state | client: client}}
    else
      {:error, reason} -> {:stop, {:broker_subscribe, reason}, state}
    end
  end

  # Events waiting in this process's mailbox before it sheds them, and the
  # work they may stand for (the outbox's age limit).
  @max_backlog 10_000
  @max_lag_us 2_000_000
  # Where the NIF delivers by itself: what `Subscriber.Publisher.deliver/4`
  # would do with the default backend and a built-in transformer.
  defp route(channel) do
    case Yggdrasil.Registry.resolve(channel) do
      {:ok, channel, %Route{backend_module: Yggdrasil.Backend.Default} = route} ->
        case route do
          %Route{direct: true} ->
            {Channel.key(channel), :binary}

          %Route{transformer_module: Yggdrasil.Transformer.Default} ->
            {Channel.key(channel), :binary}

          %Route{transformer_module: Yggdrasil.Transformer.Json} ->
            {Channel.key(channel), :json}

          _ ->
            nil
        end

      _ ->
        nil
    end
  end

  @impl GenServer
  def handle_info({Client.tag(), :event, _, _} = event, state) do
    {:message_queue_len, waiting} = Process.info(self(), :message_queue_len)

    # How many waiting events fit in the lag at this process's pace.
    fit = min(@max_backlog, div(@max_lag_us, max(state.cost_us, 1)))

    if waiting > fit do
      shed(state, waiting - fit)
      {:noreply, state}
    else
      started = System.monotonic_time(:microsecond)
      notify(event, state)
      # Behind the subscribers: it sends no faster than they take.
      state = pace(state)
      took = System.monotonic_time(:microsecond) - started
      # A moving average of what one event costs here, waits included.
      {:noreply, %{state | cost_us: div(state.cost_us * 7 + took, 8)}}
    end
  end

  def handle_info({Client.tag(), :connected}, state) do
    Manager.connected(state.channel)
    {:noreply, %{state | connected: true}}
  end

  def handle_info({Client.tag(), :disconnected}, state) do
    Manager.disconnected(state.channel)
    {:noreply, %{state | connected: false}}
  end

  def handle_info({:DOWN, _ref, :process, _owner, reason}, state),
    do: {:stop, {:broker_client_closed, reason}, state}

  def handle_info(_other, state), do: {:noreply, state}

  defp notify({_, :event, payload, metadata}, %{channel: channel} = state) do
    with {:error, reason} <- Publisher.notify(channel, payload, metadata) do
      Logger.warning(
        "Yggdrasil #{inspect(state.broker)}: dropped a message on #{inspect(channel.name)} " <>
          "that its transformer cannot decode: #{inspect(reason)}"
      )
    end
  end

  defp pace(%{key: key, pace_limits: {budget, wait_ms}} = state) do
    state = %{state | sent: state.sent + Engine.subscriber_count(key), events: state.events + 1}

    if state.sent < budget do
      state
    else
      with pid when is_pid(pid) <- Engine.some_subscriber(key, state.paces),
           do: Pacer.wait_for(pid, state.events, wait_ms)

      %{state | sent: 0, events: 0, paces: state.paces + 1}
    end
  end

  # The subscribers cannot keep up with the broker: the oldest events waiting
  # here are dropped (this one and `more`), the newest kept, and the
  # subscribers told.
  defp shed(%{channel: channel, client: client} = state, more) do
    dropped = flush_events(1, more)
    Client.shed(client, dropped)
    Manager.disconnected(channel)
    if state.connected, do: Manager.connected(channel)
  end

  defp flush_events(dropped, 0), do: dropped

  defp flush_events(dropped, more) do
    receive do
      {Client.tag(), :event, _, _} -> flush_events(dropped + 1, more - 1)
    after
      0 -> dropped
    end
  end

  @impl GenServer
  def terminate(_reason, %{client: client, channel: channel}) do
    # A killed process is unsubscribed by the client's monitor instead.
    if client, do: Client.unsubscribe(client, channel.name, self())
    Manager.disconnected(channel)
  end
end
