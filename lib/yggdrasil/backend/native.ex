defmodule Yggdrasil.Backend.Native do
  @moduledoc false
  # The default implementation behind every `use Yggdrasil.Backend`: the
  # subscription table and delivery live in the Rust engine.

  alias Yggdrasil.Channel
  alias Yggdrasil.Native
  alias Yggdrasil.Transformer

  def subscribe(%Channel{} = channel) do
    case Native.subscribe(Channel.key(channel)) do
      {:ok, _added?, _connected?} -> :ok
      {:error, reason} -> {:error, reason}
    end
  end

  def subscribe(other), do: Transformer.not_a_channel(other)

  def unsubscribe(%Channel{} = channel) do
    _ = Native.unsubscribe(Channel.key(channel))
    :ok
  end

  def unsubscribe(other), do: Transformer.not_a_channel(other)

  def notify(tag, %Channel{} = channel, nil),
    do: Native.broadcast(Channel.key(channel), {tag, channel})

  def notify(tag, %Channel{} = channel, pid) when is_pid(pid) do
    send(pid, {tag, channel})
    :ok
  end

  def notify(_tag, %Channel{}, other),
    do: {:error, "expected a pid or nil, got: #{inspect(other)}"}

  def notify(_tag, other, _pid), do: Transformer.not_a_channel(other)

  # The multi-node hook of `:elixir` channels lives here: every publish on an
  # `:elixir` channel (`Yggdrasil.publish/3`, the `:elixir` publisher
  # adapter, `Subscriber.Publisher.notify/3` or a backend's `super`) ends in
  # this function once, on the publishing node, after the transformer
  # decoded the message. The event tuple built for the local engine is sent
  # as is to each other node's relay (`Yggdrasil.Relay.forward/1`), which
  # hands it to its own engine: remote nodes get the decoded message exactly
  # once and run neither the transformer nor the backend again. Other
  # adapters are not forwarded: their subscriber process runs on every node
  # that has subscribers, so forwarding would duplicate their events.
  def publish(%Channel{adapter: adapter} = channel, message, metadata) do
    event = {:Y_EVENT, with_metadata(channel, metadata), message}

    with :ok <- Native.broadcast(Channel.key(channel), event) do
      if adapter == :elixir or adapter == Yggdrasil.Adapter.Elixir,
        do: Yggdrasil.Relay.forward(event),
        else: :ok
    end
  end

  def publish(other, _message, _metadata), do: Transformer.not_a_channel(other)

  # Most events carry no metadata on a channel that has none: no map copy.
  defp with_metadata(%Channel{metadata: metadata} = channel, metadata), do: channel
  defp with_metadata(channel, metadata), do: %Channel{channel | metadata: metadata}
end
