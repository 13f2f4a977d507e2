defmodule Yggdrasil.Publisher.Adapter do
  @moduledoc """
  Behaviour of a publisher adapter: a process that publishes to the message
  source. Publisher processes are pooled per adapter and namespace (pool size
  from `Yggdrasil.Config.publisher_options!/1`).

  `use Yggdrasil.Publisher.Adapter` defines `start_link(namespace, options)`
  as `GenServer.start_link(__MODULE__, namespace, options)` and
  `publish(publisher, channel, message, options)` as
  `GenServer.call(publisher, {:publish, channel, message})`. With
  `worker: :stateless` it also makes the module a GenServer whose process
  holds only its namespace and answers that call with `publish/4`: for
  adapters whose `publish/4` does its work in the caller.

  An adapter declared with `use Yggdrasil.Adapter, publish: :caller` is
  published to without the pool: `Yggdrasil.publish/3` calls its publisher
  module's `c:publish_in_caller/4` in the publishing process.
  """

  alias Yggdrasil.Channel
  alias Yggdrasil.Registry

  @doc """
  Starts one publisher process of the pool of `namespace` (the pool passes
  the options).
  """
  @callback start_link(namespace :: atom(), options :: GenServer.options()) ::
              GenServer.on_start()

  @doc """
  Publishes `message` in `channel` through the pooled `publisher` process
  checked out for this call; `options` are `Yggdrasil.publish/3`'s
  (`metadata:`). Runs in the publishing process.
  """
  @callback publish(
              publisher :: GenServer.server(),
              channel :: Channel.t(),
              message :: term(),
              options :: keyword()
            ) :: :ok | {:error, term()}

  @doc """
  Publishes `message` in `channel` from the publishing process itself, with
  no pooled process: what `Yggdrasil.publish/3` calls for an adapter declared
  with `publish: :caller` (required for those, unused otherwise).

  `channel` is complete (transformer and backend filled in) and `route`
  holds its modules (`t:Yggdrasil.Route.t/0`: encode with
  `route.transformer_module`); `options` are `Yggdrasil.publish/3`'s. It
  returns what `Yggdrasil.publish/3` returns: `:ok` once the message is
  handed over, or `{:error, reason}`. It may block the caller (for example
  in a `receive` with a timeout, waiting for a broker's acknowledgement) but
  must not leave messages behind in the caller's mailbox. Unlike the pooled
  path, nothing stands between it and the caller: what it raises reaches
  the caller.
  """
  @callback publish_in_caller(
              channel :: Channel.t(),
              route :: Yggdrasil.Route.t(),
              message :: term(),
              options :: keyword()
            ) :: :ok | {:error, term()}

  @optional_callbacks publish_in_caller: 4

  defmacro __using__(options) do
    quote do
      @behaviour Yggdrasil.Publisher.Adapter
      unquote(if Keyword.get(options, :worker) == :stateless, do: stateless_worker())

      @doc "Starts a publisher process for `namespace`."
      @spec start_link(atom(), GenServer.options()) :: GenServer.on_start()
      def start_link(namespace, options \\ [])
      def start_link(namespace, options), do: GenServer.start_link(__MODULE__, namespace, options)

      @doc "Publishes `message` in `channel` through `publisher`."
      @spec publish(GenServer.server(), Yggdrasil.Channel.t(), term(), keyword()) ::
              :ok | {:error, term()}
      def publish(publisher, channel, message, options \\ [])

      def publish(publisher, %Yggdrasil.Channel{} = channel, message, _options) do
        GenServer.call(publisher, {:publish, channel, message})
      end

      defoverridable start_link: 1, start_link: 2, publish: 3, publish: 4
    end
  end

  # `worker: :stateless`: the pooled process is a GenServer holding only its
  # namespace, for adapters whose `publish/4` does the work in the caller.
  defp stateless_worker do
    quote do
      use GenServer

      @impl GenServer
      def init(namespace), do: {:ok, namespace}

      @impl GenServer
      def handle_call({:publish, %Yggdrasil.Channel{} = channel, message}, _from, namespace) do
        {:reply, publish(self(), channel, message, []), namespace}
      end
    end
  end

  @doc "Starts a publisher process of the channel's adapter and namespace."
  @spec start_link(Channel.t(), GenServer.options()) :: GenServer.on_start() | {:error, term()}
  def start_link(channel, options \\ [])

  def start_link(%Channel{adapter: adapter, namespace: namespace}, options) do
    with {:ok, module} <- Registry.get_publisher_module(adapter) do
      module.start_link(namespace, options)
    end
  end

  def start_link(other, _options), do: Yggdrasil.Channel.not_a_channel(other)

  @doc "Publishes through `publisher` with the channel's publisher adapter."
  @spec publish(GenServer.server(), Channel.t(), term(), keyword()) :: :ok | {:error, term()}
  def publish(publisher, %Channel{adapter: adapter} = channel, message, options) do
    with {:ok, module} <- Registry.get_publisher_module(adapter) do
      module.publish(publisher, channel, message, options)
    end
  end

  def publish(_publisher, other, _message, _options),
    do: Yggdrasil.Channel.not_a_channel(other)

  @doc "Stops a publisher process."
  @spec stop(GenServer.server()) :: :ok
  def stop(publisher), do: GenServer.stop(publisher)
end
