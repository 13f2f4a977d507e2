defmodule Yggdrasil.Publisher.Adapter.Elixir do
  @moduledoc """
  Publisher adapter of `:elixir` channels. Publishing needs no broker, so
  `publish/4` runs in the caller: encode and decode with the channel's
  transformer, then native delivery. Per-publisher order holds.
  """
  use Yggdrasil.Publisher.Adapter
  use GenServer

  alias Yggdrasil.Channel
  alias Yggdrasil.Registry
  alias Yggdrasil.Subscriber.Publisher

  @impl Yggdrasil.Publisher.Adapter
  def publish(_publisher, %Channel{} = channel, message, options) do
    with {:ok, channel, route} <- Registry.resolve(channel) do
      transmit(channel, route, message, options[:metadata])
    end
  end

  @doc false
  # The whole :elixir pipeline once the channel's modules are known: encode,
  # then what an adapter's `notify` does (decode, deliver).
  def transmit(channel, route, message, metadata) do
    with {:ok, encoded} <- route.transformer_module.encode(channel, message) do
      Publisher.deliver(channel, route, encoded, metadata)
    end
  end

  @impl GenServer
  def init(namespace), do: {:ok, namespace}

  @impl GenServer
  def handle_call({:publish, %Channel{} = channel, message}, _from, namespace) do
    {:reply, publish(self(), channel, message, []), namespace}
  end
end
