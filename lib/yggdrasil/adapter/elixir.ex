defmodule Yggdrasil.Adapter.Elixir do
  @moduledoc """
  The `:elixir` adapter: channels whose name is any term, delivered by the
  native engine with no process per channel.

      iex> {:ok, channel} = Yggdrasil.gen_channel(name: {:room, 42})
      iex> Yggdrasil.subscribe(channel)
      :ok
      iex> receive do {:Y_CONNECTED, ^channel} -> :connected end
      :connected
      iex> Yggdrasil.publish(channel, "hello")
      :ok
      iex> receive do {:Y_EVENT, ^channel, message} -> message end
      "hello"
      iex> Yggdrasil.unsubscribe(channel)
      :ok
      iex> receive do {:Y_DISCONNECTED, ^channel} -> :disconnected end
      :disconnected
  """
  use Yggdrasil.Adapter, name: :elixir, delivery: :engine, publish: :caller
end
