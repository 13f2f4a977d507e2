defmodule Yggdrasil.Subscriber.Publisher do
  @moduledoc """
  Hands a message that arrived on a channel to its subscribers: decodes it
  with the channel's transformer, then delivers
  `{:Y_EVENT, %{channel | metadata: metadata}, decoded}` through the
  channel's backend. Called from subscriber adapter processes; it runs in
  the caller, so each adapter's events keep their order.
  """

  alias Yggdrasil.Channel
  alias Yggdrasil.Registry
  alias Yggdrasil.Route

  @doc "Decodes `message` and delivers it to the channel's subscribers."
  @spec notify(Channel.t(), term(), term()) :: :ok | {:error, term()}
  def notify(channel, message, metadata \\ nil)

  def notify(%Channel{} = channel, message, metadata) do
    with {:ok, channel, route} <- Registry.resolve(channel) do
      deliver(channel, route, message, metadata)
    end
  end

  def notify(other, _message, _metadata), do: Channel.not_a_channel(other)

  @doc """
  `notify/3` with the channel's route already at hand (as a
  `c:Yggdrasil.Publisher.Adapter.publish_in_caller/4` has it): decodes with
  `route.transformer_module`, delivers through `route.backend_module`
  (a `direct` route has nothing to decode).
  """
  @spec deliver(Channel.t(), Yggdrasil.Route.t(), term(), term()) :: :ok | {:error, term()}
  def deliver(channel, %Route{direct: true}, message, metadata),
    do: Yggdrasil.Backend.Default.publish(channel, message, metadata)

  def deliver(channel, route, message, metadata) do
    with {:ok, decoded} <- route.transformer_module.decode(channel, message) do
      route.backend_module.publish(channel, decoded, metadata)
    end
  end
end
