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

  def publish(%Channel{} = channel, message, metadata) do
    Native.broadcast(
      Channel.key(channel),
      {:Y_EVENT, %Channel{channel | metadata: metadata}, message}
    )
  end

  def publish(other, _message, _metadata), do: Transformer.not_a_channel(other)
end
