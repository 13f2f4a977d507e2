defmodule Yggdrasil.Publisher.Adapter do
  @moduledoc """
  Behaviour of a publisher adapter: a process that publishes to the message
  source. Publisher processes are pooled per adapter and namespace (pool size
  from `Yggdrasil.Config.publisher_options!/1`).

  `use Yggdrasil.Publisher.Adapter` defines `start_link(namespace, options)`
  as `GenServer.start_link(__MODULE__, namespace, options)` and
  `publish(publisher, channel, message, options)` as
  `GenServer.call(publisher, {:publish, channel, message})`.
  """

  alias Yggdrasil.Channel
  alias Yggdrasil.Registry

  @callback start_link(namespace :: atom(), options :: GenServer.options()) ::
              GenServer.on_start()
  @callback publish(
              publisher :: GenServer.server(),
              channel :: Channel.t(),
              message :: term(),
              options :: keyword()
            ) :: :ok | {:error, term()}

  defmacro __using__(_) do
    quote do
      @behaviour Yggdrasil.Publisher.Adapter

      @doc "Starts a publisher process for `namespace`."
      def start_link(namespace, options \\ [])
      def start_link(namespace, options), do: GenServer.start_link(__MODULE__, namespace, options)

      @doc "Publishes `message` in `channel` through `publisher`."
      def publish(publisher, channel, message, options \\ [])

      def publish(publisher, %Yggdrasil.Channel{} = channel, message, _options) do
        GenServer.call(publisher, {:publish, channel, message})
      end

      defoverridable start_link: 1, start_link: 2, publish: 3, publish: 4
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

  def start_link(other, _options), do: Yggdrasil.Transformer.not_a_channel(other)

  @doc "Publishes through `publisher` with the channel's publisher adapter."
  @spec publish(GenServer.server(), Channel.t(), term(), keyword()) :: :ok | {:error, term()}
  def publish(publisher, %Channel{adapter: adapter} = channel, message, options) do
    with {:ok, module} <- Registry.get_publisher_module(adapter) do
      module.publish(publisher, channel, message, options)
    end
  end

  def publish(_publisher, other, _message, _options),
    do: Yggdrasil.Transformer.not_a_channel(other)

  @doc "Stops a publisher process."
  @spec stop(GenServer.server()) :: :ok
  def stop(publisher), do: GenServer.stop(publisher)
end
