defmodule Yggdrasil.Publisher.Adapter.Elixir do
  @moduledoc """
  Publisher adapter of `:elixir` channels. Publishing needs no broker, so
  `publish/4` runs in the caller: encode and decode with the channel's
  transformer, then native delivery. Per-publisher order holds.
  """
  use Yggdrasil.Publisher.Adapter
  use GenServer

  alias Yggdrasil.Channel
  alias Yggdrasil.Subscriber.Publisher
  alias Yggdrasil.Transformer

  @impl Yggdrasil.Publisher.Adapter
  def publish(_publisher, %Channel{} = channel, message, options) do
    with {:ok, encoded} <- Transformer.encode(channel, message) do
      Publisher.notify(channel, encoded, options[:metadata])
    end
  end

  @impl GenServer
  def init(namespace), do: {:ok, namespace}

  @impl GenServer
  def handle_call({:publish, %Channel{} = channel, message}, _from, namespace) do
    {:reply, publish(self(), channel, message, []), namespace}
  end
end
