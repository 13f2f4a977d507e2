defmodule Yggdrasil.Subscriber.Manager do
  @moduledoc """
  Connection state of a channel, reported by its subscriber adapter process.

  `connected/1` and `disconnected/1` set the state in the native engine and,
  when it changed, send `{:Y_CONNECTED, channel}` / `{:Y_DISCONNECTED,
  channel}` to every subscriber, atomically with the change. A process that
  subscribes to a connected channel gets its own `{:Y_CONNECTED, channel}`.
  """

  alias Yggdrasil.Channel
  alias Yggdrasil.Engine

  @doc "Reports the channel connected."
  @spec connected(Channel.t()) :: :ok | {:error, term()}
  def connected(%Channel{} = channel), do: set_state(channel, true, :Y_CONNECTED)
  def connected(other), do: Yggdrasil.Channel.not_a_channel(other)

  @doc "Reports the channel disconnected."
  @spec disconnected(Channel.t()) :: :ok | {:error, term()}
  def disconnected(%Channel{} = channel), do: set_state(channel, false, :Y_DISCONNECTED)
  def disconnected(other), do: Yggdrasil.Channel.not_a_channel(other)

  @doc "Whether `pid` (default: the caller) is subscribed to `channel`."
  @spec subscribed?(Channel.t(), pid() | nil) :: boolean()
  def subscribed?(channel, pid \\ nil)
  def subscribed?(%Channel{} = channel, nil), do: subscribed?(channel, self())

  def subscribed?(%Channel{} = channel, pid) when is_pid(pid),
    do: Engine.subscribed?(Channel.key(channel), pid)

  def subscribed?(channel, pid),
    do:
      raise(
        ArgumentError,
        "expected a channel and a pid, got: #{inspect(channel)}, #{inspect(pid)}"
      )

  @doc "Whether the channel's adapter reported it connected."
  @spec connected?(Channel.t()) :: boolean()
  def connected?(%Channel{} = channel), do: Engine.connected?(Channel.key(channel))
  def connected?(other), do: Channel.not_a_channel!(other)

  defp set_state(channel, connected?, tag) do
    key = Channel.key(channel)
    Engine.set_connected(key, connected?, {tag, key})
  end
end
