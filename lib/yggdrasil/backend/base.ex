defmodule Yggdrasil.Backend.Base do
  @moduledoc false
  # What every `use Yggdrasil.Backend` function does by default (and what
  # `super` reaches): the subscription table and delivery live in the
  # engine.

  alias Yggdrasil.Channel
  alias Yggdrasil.Engine
  alias Yggdrasil.Registry
  alias Yggdrasil.Relay

  def subscribe(%Channel{} = channel) do
    Engine.subscribe(Channel.key(channel))
  end

  def subscribe(other), do: Channel.not_a_channel(other)

  def unsubscribe(%Channel{} = channel) do
    _ = Engine.unsubscribe(Channel.key(channel))
    :ok
  end

  def unsubscribe(other), do: Channel.not_a_channel(other)

  def notify(tag, %Channel{} = channel, nil),
    do: Engine.broadcast(Channel.key(channel), {tag, channel})

  def notify(tag, %Channel{} = channel, pid) when is_pid(pid) do
    send(pid, {tag, channel})
    :ok
  end

  def notify(_tag, %Channel{}, other),
    do: {:error, "expected a pid or nil, got: #{inspect(other)}"}

  def notify(_tag, other, _pid), do: Channel.not_a_channel(other)

  # Most events carry no metadata on a channel that has none: the channel
  # is then its own key and the event's channel, with no map copied.
  def publish(%Channel{metadata: nil} = channel, message, nil),
    do: broadcast(channel, {:Y_EVENT, channel, message})

  def publish(%Channel{} = channel, message, metadata),
    do:
      broadcast(Channel.key(channel), {:Y_EVENT, %Channel{channel | metadata: metadata}, message})

  def publish(other, _message, _metadata), do: Channel.not_a_channel(other)

  # The multi-node hook of adapters with `delivery: :engine` (`:elixir`)
  # lives here: every publish on such a channel (`Yggdrasil.publish/3`, the
  # publisher adapter, `Subscriber.Publisher.notify/3` or a backend's
  # `super`) ends here once, through `publish/3`, on the publishing node,
  # after the transformer decoded the message. The event tuple built for
  # the local engine is sent as is to each other node's relay
  # (`Relay.forward/1`), which hands it to its own engine: remote nodes get
  # the decoded message exactly once and run neither the transformer nor
  # the backend again. Adapters with `delivery: :process` are not
  # forwarded: their subscriber process runs on every node that has
  # subscribers, so forwarding would duplicate their events. With no other
  # node, the adapter is not even looked up.
  defp broadcast(key, {:Y_EVENT, %Channel{adapter: adapter}, _} = event) do
    with :ok <- Engine.broadcast(key, event) do
      case Relay.remote_nodes() do
        [] -> :ok
        _ -> if Registry.get_delivery(adapter) == :engine, do: Relay.forward(event), else: :ok
      end
    end
  end
end
