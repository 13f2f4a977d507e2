defmodule Yggdrasil.Backend.Default do
  @moduledoc """
  The `:default` backend: subscriptions and delivery in the native engine.

  Each function works on the calling process or the channel's subscribers:

      iex> {:ok, channel} = Yggdrasil.gen_channel(name: "doc:backend")
      iex> Yggdrasil.Backend.Default.subscribe(channel)
      :ok
      iex> Yggdrasil.Backend.Default.publish(channel, "hi", %{id: 1})
      :ok
      iex> receive do
      ...>   {:Y_EVENT, %Yggdrasil.Channel{metadata: %{id: 1}}, message} -> message
      ...> end
      "hi"
      iex> Yggdrasil.Backend.Default.unsubscribe(channel)
      :ok
  """
  use Yggdrasil.Backend, name: :default
end
