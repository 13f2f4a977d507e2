defmodule Yggdrasil.Backend do
  @moduledoc """
  Backends distribute messages to a channel's subscribers.

  `use Yggdrasil.Backend, name: :my_backend` defines a backend whose every
  function is overridable and, by default, served by the native engine:

      defmodule MyApp.AuditBackend do
        use Yggdrasil.Backend, name: :audit

        def publish(channel, message, metadata) do
          MyApp.Audit.log(channel, message)
          super(channel, message, metadata)
        end
      end

  Register it (`MyApp.AuditBackend.register()` or `{MyApp.AuditBackend, []}`
  in a supervisor) and use it with `%Yggdrasil.Channel{backend: :audit}`.

  The functions of this module dispatch on `channel.backend`.
  """

  alias Yggdrasil.Channel
  alias Yggdrasil.Registry

  @doc "Subscribes the calling process to `channel`."
  @callback subscribe(channel :: Channel.t()) :: :ok | {:error, term()}

  @doc "Stops delivery of `channel` to the calling process."
  @callback unsubscribe(channel :: Channel.t()) :: :ok | {:error, term()}

  @doc """
  Sends `{:Y_CONNECTED, channel}` to `pid`, or to every subscriber of
  `channel` when `pid` is `nil`.
  """
  @callback connected(channel :: Channel.t(), pid :: nil | pid()) :: :ok | {:error, term()}

  @doc """
  Sends `{:Y_DISCONNECTED, channel}` to `pid`, or to every subscriber of
  `channel` when `pid` is `nil`.
  """
  @callback disconnected(channel :: Channel.t(), pid :: nil | pid()) :: :ok | {:error, term()}

  @doc """
  Sends the decoded `message` to every subscriber of `channel` as
  `{:Y_EVENT, %{channel | metadata: metadata}, message}`.
  """
  @callback publish(channel :: Channel.t(), message :: term(), metadata :: term()) ::
              :ok | {:error, term()}

  defmacro __using__(options) do
    name = Yggdrasil.Registration.fetch_name!(options, "Yggdrasil.Backend")

    quote do
      @behaviour Yggdrasil.Backend
      use Yggdrasil.Registration, register: {:register_backend, unquote(name)}

      @doc "Subscribes the calling process to `channel`."
      @spec subscribe(Yggdrasil.Channel.t()) :: :ok | {:error, term()}
      def subscribe(channel), do: Yggdrasil.Backend.Base.subscribe(channel)

      @doc "Stops delivery of `channel` to the calling process."
      @spec unsubscribe(Yggdrasil.Channel.t()) :: :ok | {:error, term()}
      def unsubscribe(channel), do: Yggdrasil.Backend.Base.unsubscribe(channel)

      @doc "Sends `{:Y_CONNECTED, channel}` to `pid`, or to every subscriber when `nil`."
      @spec connected(Yggdrasil.Channel.t(), nil | pid()) :: :ok | {:error, term()}
      def connected(channel, pid), do: Yggdrasil.Backend.Base.notify(:Y_CONNECTED, channel, pid)

      @doc "Sends `{:Y_DISCONNECTED, channel}` to `pid`, or to every subscriber when `nil`."
      @spec disconnected(Yggdrasil.Channel.t(), nil | pid()) :: :ok | {:error, term()}
      def disconnected(channel, pid),
        do: Yggdrasil.Backend.Base.notify(:Y_DISCONNECTED, channel, pid)

      @doc "Sends `{:Y_EVENT, %{channel | metadata: metadata}, message}` to every subscriber."
      @spec publish(Yggdrasil.Channel.t(), term(), term()) :: :ok | {:error, term()}
      def publish(channel, message, metadata),
        do: Yggdrasil.Backend.Base.publish(channel, message, metadata)

      defoverridable subscribe: 1, unsubscribe: 1, connected: 2, disconnected: 2, publish: 3
    end
  end

  @doc """
  A binary name for the channel (kept from Yggdrasil 6 for backends that
  need a topic string; the native engine does not use it).
  """
  @spec transform_name(Channel.t()) :: binary()
  def transform_name(%Channel{} = channel) do
    channel |> Channel.key() |> :erlang.phash2() |> Integer.to_string()
  end

  def transform_name(other), do: Channel.not_a_channel!(other)

  @doc "Subscribes the calling process through the channel's backend."
  @spec subscribe(Channel.t()) :: :ok | {:error, term()}
  def subscribe(channel), do: dispatch(channel, :subscribe, [])

  @doc "Unsubscribes the calling process through the channel's backend."
  @spec unsubscribe(Channel.t()) :: :ok | {:error, term()}
  def unsubscribe(channel), do: dispatch(channel, :unsubscribe, [])

  @doc "Sends `{:Y_CONNECTED, channel}` through the channel's backend."
  @spec connected(Channel.t(), nil | pid()) :: :ok | {:error, term()}
  def connected(channel, pid \\ nil), do: dispatch(channel, :connected, [pid])

  @doc "Sends `{:Y_DISCONNECTED, channel}` through the channel's backend."
  @spec disconnected(Channel.t(), nil | pid()) :: :ok | {:error, term()}
  def disconnected(channel, pid \\ nil), do: dispatch(channel, :disconnected, [pid])

  @doc "Publishes `message` with `metadata` through the channel's backend."
  @spec publish(Channel.t(), term(), term()) :: :ok | {:error, term()}
  def publish(channel, message, metadata \\ nil),
    do: dispatch(channel, :publish, [message, metadata])

  defp dispatch(%Channel{backend: backend} = channel, function, args) do
    with {:ok, module} <- Registry.get_backend_module(backend) do
      apply(module, function, [channel | args])
    end
  end

  defp dispatch(other, _function, _args), do: Yggdrasil.Channel.not_a_channel(other)
end
