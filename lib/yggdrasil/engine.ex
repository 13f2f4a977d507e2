defmodule Yggdrasil.Engine do
  @moduledoc false
  # The one way into the native engine: every other module calls this one,
  # never `Yggdrasil.Native` (the NIF stubs). What the NIFs leave to Elixir
  # lives here: resuming fan-outs and listings that yielded the scheduler
  # (`{:more, _}`, a cursor), and picking a dirty scheduler for big JSON.
  #
  # A `key` is the channel as the engine knows it: `Yggdrasil.Channel.key/1`,
  # the struct without metadata, compared with `=:=`.

  alias Yggdrasil.Channel
  alias Yggdrasil.Native

  @type key :: Channel.t()

  # Above this size, parsing JSON may take longer than a scheduler slice.
  @dirty_json_bytes 64 * 1024

  @doc false
  # Why the NIF library did not load, or nil when it did.
  @spec load_error() :: binary() | nil
  def load_error, do: Native.load_error()

  @doc false
  # Subscribes the caller (monitored from now on). When the channel is
  # connected, the caller also gets its own `{:Y_CONNECTED, key}`.
  @spec subscribe(key()) :: :ok | {:error, :process_dead | :too_many_channels | :internal}
  def subscribe(key), do: Native.subscribe(key)

  @doc false
  # Unsubscribes the caller; `:emptied` when it was the last subscriber of
  # a watched channel. Nothing from this channel reaches the caller after.
  @spec unsubscribe(key()) :: :not_subscribed | :unsubscribed | :emptied
  def unsubscribe(key), do: Native.unsubscribe(key)

  @doc false
  # Sends `message` to every subscriber of `key`.
  @spec broadcast(key(), term()) :: :ok
  def broadcast(key, message), do: finish(publish(key, message), message)

  # A channel of a few subscribers is sent to under the engine's table lock
  # (cheapest), unless copying the message may take long: any list, map or
  # tuple in it but the channel struct itself.
  defguardp flat(term) when is_binary(term) or is_atom(term) or is_number(term) or is_pid(term)

  defp publish(key, {:Y_EVENT, %Channel{name: name, metadata: metadata}, payload} = event)
       when flat(name) and flat(metadata) and flat(payload),
       do: Native.publish(key, event)

  defp publish(key, {tag, %Channel{name: name, metadata: metadata}} = notice)
       when tag in [:Y_CONNECTED, :Y_DISCONNECTED] and flat(name) and flat(metadata),
       do: Native.publish(key, notice)

  defp publish(key, message), do: Native.publish_large(key, message)

  @doc false
  # Sets the channel's connection state and, when it changed, sends
  # `message` to every subscriber, atomically with the change.
  @spec set_connected(key(), boolean(), term()) :: :ok
  def set_connected(key, connected?, message),
    do: finish(Native.set_connected(key, connected?, message), message)

  @doc false
  # Goes on with a fan-out handed over as a cursor (a broker sender's share
  # of a wide channel, `Yggdrasil.Broker.Sender`).
  @spec resume_broadcast(reference(), term()) :: :ok
  def resume_broadcast(cursor, message), do: finish(Native.fanout_more(cursor, message), message)

  defp finish(:ok, _message), do: :ok
  defp finish({:more, rest}, message), do: finish(Native.fanout_more(rest, message), message)

  @doc false
  # Marks a channel as served by an adapter process, so its emptying is
  # reported (to the unsubscriber or to the Generator). `false` when the
  # channel has no subscribers (the engine then does not know it).
  @spec watch(key()) :: boolean()
  def watch(key), do: Native.set_watched(key, true)

  @doc false
  # Registers the Generator (`Yggdrasil.Subscriber.Generator`), the process
  # told `{:"$yggdrasil_emptied", key}` when a subscriber's death empties a
  # watched channel.
  @spec set_generator(pid()) :: :ok
  def set_generator(pid), do: Native.set_generator(pid)

  @doc false
  # The channel's subscribers as one list, fetched a bounded page per NIF
  # call (a channel may have millions), all from one snapshot.
  @spec subscribers(key()) :: [pid()]
  def subscribers(key) do
    case Native.subscribers_page(key) do
      {pids, nil} -> pids
      {pids, cursor} -> collect(cursor, [pids])
    end
  end

  defp collect(cursor, pages) do
    case Native.subscribers_more(cursor) do
      {pids, nil} -> :lists.append(:lists.reverse([pids | pages]))
      {pids, cursor} -> collect(cursor, [pids | pages])
    end
  end

  @doc false
  # One of the channel's subscribers, nil if none: the `turn`th (modulo) of
  # the first page of `subscribers/1`, so that successive turns name
  # different ones.
  @spec some_subscriber(key(), non_neg_integer()) :: pid() | nil
  def some_subscriber(key, turn) do
    case Native.subscribers_page(key) do
      {[], _} -> nil
      {pids, _} -> Enum.at(pids, rem(turn, length(pids)))
    end
  end

  @doc false
  # The keys of every watched channel (one with an adapter process), read a
  # bounded page of the table per NIF call.
  @spec watched_channels() :: [key()]
  def watched_channels, do: watched_from(0, [])

  defp watched_from(nil, pages), do: pages |> :lists.reverse() |> :lists.append()

  defp watched_from(from, pages) do
    {keys, next} = Native.watched_page(from)
    watched_from(next, [keys | pages])
  end

  @doc false
  @spec subscriber_count(key()) :: non_neg_integer()
  def subscriber_count(key), do: Native.subscriber_count(key)

  @doc false
  @spec subscribed?(key(), pid()) :: boolean()
  def subscribed?(key, pid), do: Native.is_subscribed(key, pid)

  @doc false
  @spec connected?(key()) :: boolean()
  def connected?(key), do: Native.is_connected(key)

  @doc false
  # Table sizes, bytes the NIF holds, and the counters (see the NIF's
  # `stats` module).
  @spec info() :: %{atom() => non_neg_integer()}
  def info, do: Native.info()

  @doc false
  # Zeroes the counters of `info/0`, for measurements over a window.
  @spec reset_counters() :: :ok
  def reset_counters, do: Native.reset_counters()

  @doc false
  @spec json_encode(term()) :: {:ok, binary()} | {:error, term()}
  def json_encode(term) do
    case Native.json_encode(term) do
      :too_big -> Native.json_encode_dirty(term)
      result -> result
    end
  end

  @doc false
  # Both JSON NIFs answer `:too_big` when the work would not fit in a
  # scheduler slice; the dirty ones have no limit.
  @spec json_decode(binary()) :: {:ok, term()} | {:error, term()}
  def json_decode(text) when byte_size(text) > @dirty_json_bytes,
    do: Native.json_decode_dirty(text)

  def json_decode(text) do
    case Native.json_decode(text) do
      :too_big -> Native.json_decode_dirty(text)
      result -> result
    end
  end
end
