defmodule Yggdrasil.Publisher.Adapter.Elixir do
  @moduledoc """
  Publisher adapter of `:elixir` channels (`publish: :caller`). Publishing
  needs no broker, so `Yggdrasil.publish/3` runs `publish_in_caller/4` in
  the caller: encode and decode with the channel's transformer, then native
  delivery. Per-publisher order holds.
  """
  use Yggdrasil.Publisher.Adapter, worker: :stateless

  alias Yggdrasil.Channel
  alias Yggdrasil.Registry
  alias Yggdrasil.Route
  alias Yggdrasil.Subscriber.Publisher

  @impl Yggdrasil.Publisher.Adapter
  def publish(_publisher, %Channel{} = channel, message, options) do
    with {:ok, channel, route} <- Registry.resolve(channel) do
      publish_in_caller(channel, route, message, options)
    end
  end

  # The whole pipeline once the channel's modules are known: encode (not
  # with the identity transformer of a `direct` route), then what an
  # adapter's `notify` does (decode, deliver).
  @impl Yggdrasil.Publisher.Adapter
  def publish_in_caller(channel, %Route{direct: true} = route, message, options),
    do: Publisher.deliver(channel, route, message, metadata(options))

  def publish_in_caller(channel, route, message, options) do
    with {:ok, encoded} <- route.transformer_module.encode(channel, message) do
      Publisher.deliver(channel, route, encoded, metadata(options))
    end
  end

  # Most publishes pass no options: those skip `Access` altogether, which
  # showed in the cost of a publish (docs/performance.md).
  defp metadata([]), do: nil
  defp metadata(options), do: Keyword.get(options, :metadata)
end
