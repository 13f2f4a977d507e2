defmodule Yggdrasil do
  @moduledoc """
  Publisher/subscriber with the Yggdrasil 6 API and a native engine.

  The calling process subscribes, and receives tuples:

      iex> {:ok, channel} = Yggdrasil.gen_channel(name: "room:42")
      iex> Yggdrasil.subscribe(channel)
      :ok
      iex> receive do {:Y_CONNECTED, ^channel} -> :connected end
      :connected
      iex> Yggdrasil.publish(channel, "hi")
      :ok
      iex> receive do {:Y_EVENT, ^channel, message} -> message end
      "hi"
      iex> Yggdrasil.unsubscribe(channel)
      :ok
      iex> receive do {:Y_DISCONNECTED, ^channel} -> :disconnected end
      :disconnected

  Channels can also be given as maps or keyword lists (`[name: "room:42"]`).

  `use Yggdrasil` turns a module into a subscriber process with callbacks:

      defmodule Printer do
        use Yggdrasil

        def start_link(channel), do: Yggdrasil.start_link(__MODULE__, [channel])

        @impl Yggdrasil
        def handle_event(_channel, message, state) do
          IO.inspect(message)
          {:ok, state}
        end
      end
  """
  use GenServer

  require Logger

  alias Yggdrasil.Backend
  alias Yggdrasil.Channel
  alias Yggdrasil.Registry
  alias Yggdrasil.Route

  @typedoc "A channel as a struct, a map or a keyword list."
  @type channel :: Channel.t() | map() | keyword()

  ############
  # Public API

  @doc """
  Subscribes the calling process to `channel`. It then receives
  `{:Y_CONNECTED, channel}` and, per published message,
  `{:Y_EVENT, channel, message}`. Subscribing twice is idempotent: one
  delivery per event.
  """
  @spec subscribe(channel()) :: :ok | {:error, term()}
  def subscribe(channel) do
    with {:ok, channel} <- gen_channel(channel) do
      if native?(channel) do
        with :ok <- Backend.subscribe(channel), do: Backend.connected(channel, self())
      else
        Yggdrasil.Subscriber.Generator.subscribe(channel)
      end
    end
  end

  @doc """
  Unsubscribes the calling process from `channel`; it receives
  `{:Y_DISCONNECTED, channel}`. Returns `:ok` also when it was not
  subscribed.
  """
  @spec unsubscribe(channel()) :: :ok | {:error, term()}
  def unsubscribe(channel) do
    with {:ok, channel} <- gen_channel(channel) do
      if native?(channel) do
        with :ok <- Backend.unsubscribe(channel), do: Backend.disconnected(channel, self())
      else
        Yggdrasil.Subscriber.Generator.unsubscribe(channel)
      end
    end
  end

  @doc """
  Publishes `message` in `channel`: encoded with the channel's transformer,
  sent through its adapter, and delivered decoded. Options: `metadata:`
  (set as the delivered channel's `metadata`).
  """
  @spec publish(channel(), term(), keyword()) :: :ok | {:error, term()}
  def publish(channel, message, options \\ [])

  def publish(%Channel{} = channel, message, options) do
    with :ok <- check_options(options) do
      case Registry.resolve(channel) do
        # Adapters that publish in the caller (`:elixir` among them): no
        # process in between.
        {:ok, channel, %Route{publish: :caller, publish_in_caller: publish} = route} ->
          publish.(channel, route, message, options)

        # Other adapters (and :bridge channels for adapters on other nodes)
        # publish through their pooled publisher processes.
        _ ->
          with {:ok, channel} <- gen_channel(channel) do
            Yggdrasil.Publisher.publish(channel, message, options)
          end
      end
    end
  end

  def publish(channel, message, options) do
    with {:ok, channel} <- gen_channel(channel), do: publish(channel, message, options)
  end

  @doc """
  Builds a complete channel from a struct, map or keyword list: fills
  `transformer` and `backend` from the adapter's defaults and checks that
  adapter, transformer and backend are registered. Keys that are not
  channel fields are ignored, as in Yggdrasil 6.

      iex> Yggdrasil.gen_channel(name: "x")
      {:ok, %Yggdrasil.Channel{name: "x", adapter: :elixir, transformer: :default, backend: :default}}
      iex> Yggdrasil.gen_channel(%{name: "x", transformer: :json})
      {:ok, %Yggdrasil.Channel{name: "x", adapter: :elixir, transformer: :json, backend: :default}}
      iex> {:error, _} = Yggdrasil.gen_channel(name: "x", adapter: :unknown)
      iex> {:error, _} = Yggdrasil.gen_channel("x")
  """
  @spec gen_channel(channel()) :: {:ok, Channel.t()} | {:error, term()}
  def gen_channel(%Channel{} = channel), do: Registry.get_full_channel(channel)

  def gen_channel(data) when is_map(data) and not is_struct(data) do
    data |> Map.to_list() |> gen_channel()
  end

  def gen_channel(data) when is_list(data) do
    if Keyword.keyword?(data) do
      # Like Yggdrasil 6 (`struct/2`), keys that are not channel fields are
      # ignored, so code that passes extra keys keeps working; a typo
      # (`nam:`) is logged, once per key.
      data = Keyword.delete(data, :__struct__)
      warn_unknown_keys(data)
      data |> then(&struct(Channel, &1)) |> gen_channel()
    else
      {:error, "a channel must be a keyword list, got: #{inspect(data)}"}
    end
  end

  def gen_channel(other), do: Channel.not_a_channel(other)

  @channel_fields Channel.__struct__() |> Map.keys() |> List.delete(:__struct__)

  defp warn_unknown_keys([]), do: :ok

  defp warn_unknown_keys([{key, _} | rest]) when key in @channel_fields,
    do: warn_unknown_keys(rest)

  defp warn_unknown_keys([{key, _} | rest]) do
    # A persistent term per distinct key: read on every later call, written
    # once (keys are atoms, so their number is bounded).
    warned = {__MODULE__, :unknown_channel_key, key}

    unless :persistent_term.get(warned, false) do
      :persistent_term.put(warned, true)

      Logger.warning(
        "Yggdrasil: channel key #{inspect(key)} is not a channel field and is ignored " <>
          "(fields: #{Enum.map_join(@channel_fields, ", ", &inspect/1)}); " <>
          "logged once per key"
      )
    end

    warn_unknown_keys(rest)
  end

  @doc """
  Engine introspection: `channels`, `subscribers` (monitored processes),
  `subscriptions`, `memory_bytes` (the engine's own tables), `deliveries`
  (messages sent), and how long fan-outs to many subscribers held their
  scheduler: `fanout_calls` (calls that took more than one batch of
  sends), `fanout_max_wall_us`, `fanout_max_cpu_us`, `fanout_max_batch_us`
  (the longest single batch of sends inside them), `fanout_over_1ms_wall`,
  `fanout_over_1ms_cpu`. Counters count since the library loaded.
  """
  @spec info() :: %{atom() => non_neg_integer()}
  def info, do: Yggdrasil.Engine.info()

  @doc """
  The open broker clients (`:redis`, `:postgres`, `:rabbitmq`), one map per
  `{broker, namespace}`, and how each copes with its load:

    * `queued`, `queued_bytes`: events read from the broker and waiting to
      be delivered (per client: past 16,384 events or 16 MiB the backlog is
      dropped in favour of newer events);
    * `dropped`: events dropped because subscribers could not keep up;
    * `shed`: gaps told, each with `{:Y_DISCONNECTED, channel}` then
      `{:Y_CONNECTED, channel}` where the events are missing
      (`docs/guarantees.md`);
    * `cuts`: subscribing connections cut because the broker sent faster
      than the client could read (a lost connection for the subscribers);
    * `connections`, `topics` (broker-level subscriptions), `subscriptions`,
      `monitored` (subscriber processes), `tasks`.

  Counts are since the client opened.

      iex> is_map(Yggdrasil.broker_info())
      true
  """
  @spec broker_info() :: %{{atom(), atom() | nil} => %{atom() => non_neg_integer()}}
  def broker_info, do: Yggdrasil.Broker.info()

  @doc """
  How many processes are subscribed to `channel` (struct, map or keyword
  list) on this node.

      iex> Yggdrasil.subscribe(name: "doc:count")
      :ok
      iex> Yggdrasil.subscriber_count(name: "doc:count")
      1
  """
  @spec subscriber_count(channel()) :: non_neg_integer() | {:error, term()}
  def subscriber_count(channel) do
    with {:ok, channel} <- gen_channel(channel),
         do: Yggdrasil.Engine.subscriber_count(Channel.key(channel))
  end

  @doc """
  The pids subscribed to `channel` on this node, in no particular order.
  Read in bounded steps, so it is safe on channels with millions of
  subscribers (the list itself is then that long).

      iex> Yggdrasil.subscribe(name: "doc:subscribers")
      :ok
      iex> Yggdrasil.subscribers(name: "doc:subscribers") == [self()]
      true
  """
  @spec subscribers(channel()) :: [pid()] | {:error, term()}
  def subscribers(channel) do
    with {:ok, channel} <- gen_channel(channel),
         do: Yggdrasil.Engine.subscribers(Channel.key(channel))
  end

  defp check_options([]), do: :ok

  defp check_options(options) do
    if Keyword.keyword?(options),
      do: :ok,
      else: {:error, "publish options must be a keyword list, got: #{inspect(options)}"}
  end

  # Channels whose adapter needs no process: the engine does everything.
  defp native?(%Channel{adapter: adapter}), do: Registry.get_delivery(adapter) == :engine

  ###########
  # Behaviour

  @doc "Initializes the subscriber: `{:subscribe, channels, state}` or `{:stop, reason}`."
  @callback init(args) :: {:subscribe, [channel()], state} | {:stop, reason}
            when args: term(), state: term(), reason: term()

  @doc "A channel connected."
  @callback handle_connect(Channel.t(), state) :: result
            when state: term(), result: callback_result()

  @doc "A channel disconnected."
  @callback handle_disconnect(Channel.t(), state) :: result
            when state: term(), result: callback_result()

  @doc "A message arrived on a channel."
  @callback handle_event(Channel.t(), message :: term(), state) :: result
            when state: term(), result: callback_result()

  @doc "The subscriber is stopping."
  @callback terminate(reason :: term(), state :: term()) :: term()

  @typedoc "What the callbacks return."
  @type callback_result ::
          {:ok, term()}
          | {:subscribe, [channel()], term()}
          | {:unsubscribe, [channel()], term()}
          | {:stop, term(), term()}

  @doc "Starts a `use Yggdrasil` `module` with `args` (passed to `init/1`)."
  @spec start_link(module(), term(), GenServer.options()) :: GenServer.on_start()
  def start_link(module, args, options \\ []) do
    GenServer.start_link(__MODULE__, {module, args}, options)
  end

  @doc "Stops a `use Yggdrasil` subscriber."
  @spec stop(GenServer.server(), term(), timeout()) :: :ok
  defdelegate stop(server, reason \\ :normal, timeout \\ :infinity), to: GenServer

  defmacro __using__(options) do
    quote do
      @behaviour Yggdrasil

      @doc false
      def child_spec(init_arg) do
        Supervisor.child_spec(
          %{id: __MODULE__, start: {__MODULE__, :start_link, [init_arg]}},
          unquote(Macro.escape(options))
        )
      end

      @doc false
      def init(channels) when is_list(channels), do: {:subscribe, channels, nil}

      @doc false
      def handle_connect(_channel, state), do: {:ok, state}

      @doc false
      def handle_disconnect(_channel, state), do: {:ok, state}

      @doc false
      def handle_event(_channel, _message, state), do: {:ok, state}

      @doc false
      def terminate(_reason, _state), do: :ok

      defoverridable child_spec: 1,
                     init: 1,
                     handle_connect: 2,
                     handle_disconnect: 2,
                     handle_event: 3,
                     terminate: 2
    end
  end

  ####################
  # GenServer wrapper

  # The wrapper's state, as in Yggdrasil 6: applications' tests read
  # `:sys.get_state(pid).state`.
  @doc false
  defstruct [:module, :state]

  @impl GenServer
  def init({module, args}) do
    case module.init(args) do
      {:subscribe, channels, state} ->
        {:ok, %Yggdrasil{module: module, state: state}, {:continue, {:subscribe, channels}}}

      {:stop, reason} ->
        {:stop, reason}
    end
  end

  @impl GenServer
  def handle_continue({action, channels}, %Yggdrasil{module: module} = state) do
    for channel <- channels do
      case apply(__MODULE__, action, [channel]) do
        :ok ->
          :ok

        {:error, reason} ->
          Logger.error(
            "#{inspect(module)} could not #{action} #{inspect(channel)}: #{inspect(reason)}"
          )
      end
    end

    {:noreply, state}
  end

  @impl GenServer
  def handle_info({:Y_CONNECTED, channel}, %Yggdrasil{module: module, state: state} = wrapper),
    do: run(wrapper, module.handle_connect(channel, state))

  def handle_info({:Y_DISCONNECTED, channel}, %Yggdrasil{module: module, state: state} = wrapper),
    do: run(wrapper, module.handle_disconnect(channel, state))

  def handle_info(
        {:Y_EVENT, channel, message},
        %Yggdrasil{module: module, state: state} = wrapper
      ),
      do: run(wrapper, module.handle_event(channel, message, state))

  def handle_info(_other, wrapper), do: {:noreply, wrapper}

  @impl GenServer
  def terminate(reason, %Yggdrasil{module: module, state: state}),
    do: module.terminate(reason, state)

  defp run(wrapper, {:ok, state}), do: {:noreply, %Yggdrasil{wrapper | state: state}}

  defp run(wrapper, {action, channels, state}) when action in [:subscribe, :unsubscribe],
    do: {:noreply, %Yggdrasil{wrapper | state: state}, {:continue, {action, channels}}}

  defp run(wrapper, {:stop, reason, state}),
    do: {:stop, reason, %Yggdrasil{wrapper | state: state}}
end
