defmodule Yggdrasil.Subscriber.Adapter do
  @moduledoc """
  Behaviour of a subscriber adapter: the process that, for one channel,
  listens to the message source and hands what it gets to the subscribers.

  One such process runs per channel while the channel has subscribers; the
  first subscriber starts it and it is stopped with reason `:normal` when the
  last subscriber leaves or dies. From inside it, report the connection with
  `Yggdrasil.Subscriber.Manager.connected/1` and `disconnected/1`, and hand
  messages over with `Yggdrasil.Subscriber.Publisher.notify/2,3`.

  `use Yggdrasil.Subscriber.Adapter` defines `start_link(channel, options)`
  as `GenServer.start_link(__MODULE__, %{channel: channel}, options)`.
  """

  alias Yggdrasil.Channel
  alias Yggdrasil.Registry

  @doc """
  Starts the one process serving `channel` (called by Yggdrasil on the
  first subscriber; `options` come from its supervisor). It must return
  quickly: connect after `init/1`, e.g. in `handle_continue/2`.
  """
  @callback start_link(channel :: Channel.t(), options :: GenServer.options()) ::
              GenServer.on_start()

  @doc """
  Optional: refuses `channel` before anything starts, e.g. a name the
  message source cannot take. `{:error, reason}` is what
  `Yggdrasil.subscribe/1` returns, and the caller is not subscribed.
  """
  @callback check_channel(channel :: Channel.t()) :: :ok | {:error, term()}

  @optional_callbacks check_channel: 1

  defmacro __using__(_) do
    quote do
      @behaviour Yggdrasil.Subscriber.Adapter

      @doc "Starts the subscriber adapter process of `channel`."
      @spec start_link(Yggdrasil.Channel.t(), GenServer.options()) :: GenServer.on_start()
      def start_link(channel, options \\ [])

      def start_link(%Yggdrasil.Channel{} = channel, options) do
        GenServer.start_link(__MODULE__, %{channel: channel}, options)
      end

      defoverridable start_link: 1, start_link: 2
    end
  end

  @doc false
  # The channel's adapter's `check_channel/1`, when the adapter is known on
  # this node and has one.
  @spec check(Channel.t()) :: :ok | {:error, term()}
  def check(channel) do
    with {:ok, _channel, %{subscriber_module: module}} when module != nil <-
           Registry.resolve(channel),
         true <- function_exported?(module, :check_channel, 1) do
      module.check_channel(channel)
    else
      _ -> :ok
    end
  end

  @doc "Starts the subscriber adapter of the channel's adapter."
  @spec start_link(Channel.t(), GenServer.options()) :: GenServer.on_start() | {:error, term()}
  def start_link(channel, options \\ [])

  def start_link(%Channel{adapter: adapter} = channel, options) do
    with {:ok, module} <- Registry.get_subscriber_module(adapter) do
      module.start_link(channel, options)
    end
  end

  def start_link(other, _options), do: Yggdrasil.Channel.not_a_channel(other)

  @doc "Stops a subscriber adapter process."
  @spec stop(GenServer.server(), term(), timeout()) :: :ok
  defdelegate stop(adapter, reason \\ :normal, timeout \\ :infinity), to: GenServer
end
