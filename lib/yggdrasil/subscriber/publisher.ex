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
  alias Yggdrasil.Transformer

  @doc "Decodes `message` and delivers it to the channel's subscribers."
  @spec notify(Channel.t(), term(), term()) :: :ok | {:error, term()}
  def notify(channel, message, metadata \\ nil)

  def notify(%Channel{} = channel, message, metadata) do
    with {:ok, channel, route} <- Registry.resolve(channel) do
      deliver(channel, route, message, metadata)
    end
  end

  def notify(other, _message, _metadata), do: Transformer.not_a_channel(other)

  @doc false
  # `notify/3` once the channel's modules are known (see
  # `Yggdrasil.Registry.resolve/1`): decode, then deliver.
  def deliver(channel, route, message, metadata) do
    with {:ok, decoded} <- route.transformer_module.decode(channel, message) do
      route.backend_module.publish(channel, decoded, metadata)
    end
  end
end
