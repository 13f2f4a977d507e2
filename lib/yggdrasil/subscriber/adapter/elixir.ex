defmodule Yggdrasil.Subscriber.Adapter.Elixir do
  @moduledoc """
  Subscriber adapter of `:elixir` channels. The native engine delivers these
  channels with no process per channel, so `Yggdrasil.subscribe/1` never
  starts this; started by hand, it simply reports the channel connected.
  """
  use Yggdrasil.Subscriber.Adapter
  use GenServer

  @impl GenServer
  def init(%{channel: channel}) do
    {:ok, channel, {:continue, :connect}}
  end

  @impl GenServer
  def handle_continue(:connect, channel) do
    Yggdrasil.Subscriber.Manager.connected(channel)
    {:noreply, channel}
  end
end
