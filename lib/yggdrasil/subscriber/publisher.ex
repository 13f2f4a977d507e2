defmodule Yggdrasil.Subscriber.Publisher do
  @moduledoc """
  Hands a message that arrived on a channel to its subscribers: decodes it
  with the channel's transformer, then delivers
  `{:Y_EVENT, %{channel | metadata: metadata}, decoded}` through the
  channel's backend. Called from subscriber adapter processes; it runs in
  the caller, so each adapter's events keep their order.
  """

  alias Yggdrasil.Backend
  alias Yggdrasil.Channel
  alias Yggdrasil.Transformer

  @doc "Decodes `message` and delivers it to the channel's subscribers."
  @spec notify(Channel.t(), term(), term()) :: :ok | {:error, term()}
  def notify(channel, message, metadata \\ nil)

  def notify(%Channel{} = channel, message, metadata) do
    with {:ok, decoded} <- Transformer.decode(channel, message) do
      Backend.publish(channel, decoded, metadata)
    end
  end

  def notify(other, _message, _metadata), do: Transformer.not_a_channel(other)
end
