defmodule Yggdrasil.Broker.Client do
  @moduledoc false
  # The one way into the broker side of the NIF (`Yggdrasil.Engine` is the
  # way into the engine side). A client is the resource of one broker and
  # namespace (`native/yggdrasil_nif/src/broker/`); every call returns at
  # once, and what happens later arrives as messages tagged
  # `:"$yggdrasil_broker"` (listed in `Yggdrasil.Native`).

  alias Yggdrasil.Native

  # Above this size, copying the payload may take a good part of a
  # scheduler slice: it is done on a dirty scheduler instead.
  @dirty_payload_bytes 1024 * 1024

  @typedoc "A broker client resource."
  @type t :: reference()

  @doc false
  # The tag of every message a client sends.
  defmacro tag, do: :"$yggdrasil_broker"

  @doc false
  # The setting keys of `broker` (its schema in Rust), or why it cannot be used.
  @spec keys(atom()) :: {:ok, [atom()]} | {:error, binary()}
  def keys(broker), do: Native.broker_keys(broker)

  @doc false
  # `given` checked by the broker's schema: every key, typed, defaults filled in.
  @spec settings(atom(), list()) :: {:ok, keyword()} | {:error, binary()}
  def settings(broker, given), do: Native.broker_settings(broker, given)

  @doc false
  # `given`: what `Yggdrasil.Config.broker_sources/2` found.
  @spec open(atom(), list(), pid()) :: {:ok, t()} | {:error, binary()}
  def open(broker, given, owner), do: Native.broker_open(broker, given, owner)

  @doc false
  @spec info(t()) :: %{publish_timeout: pos_integer(), endpoint: binary()}
  def info(client), do: Native.broker_info(client)

  @doc false
  @spec check_name(t(), term()) :: :ok | {:error, binary()}
  def check_name(client, name), do: Native.broker_check_name(client, name)

  @doc false
  # `route`: see `Yggdrasil.Native.broker_subscribe/4`.
  @spec subscribe(t(), term(), pid(), nil | {term(), :binary | :json}) ::
          :ok | {:error, binary()}
  def subscribe(client, name, pid, route \\ nil),
    do: Native.broker_subscribe(client, name, pid, route)

  @doc false
  @spec unsubscribe(t(), term(), pid()) :: :ok | {:error, binary()}
  def unsubscribe(client, name, pid), do: Native.broker_unsubscribe(client, name, pid)

  @doc false
  # `:ok`: one `{tag, :published, ref, result}` reaches the caller, `ref`
  # the reference it made for this publish.
  @spec publish(t(), term(), binary(), map(), reference()) :: :ok | {:error, binary()}
  def publish(client, name, payload, options, tag)
      when byte_size(payload) > @dirty_payload_bytes,
      do: Native.broker_publish_dirty(client, name, payload, options, tag)

  def publish(client, name, payload, options, tag),
    do: Native.broker_publish(client, name, payload, options, tag)

  @doc false
  # `Yggdrasil.Broker.Pacer`'s calls: it is the pacer, it answers a pace.
  @spec set_pacer(pid()) :: :ok
  def set_pacer(pid), do: Native.broker_set_pacer(pid)

  @doc false
  @spec paced(non_neg_integer()) :: :ok
  def paced(seq), do: Native.broker_paced(seq)

  @doc false
  # `{budget, max_wait_ms}` of the delivery thread's pacing, for a channel
  # process that paces its own fan-outs the same way.
  @spec pace_limits() :: {pos_integer(), pos_integer()}
  def pace_limits, do: Native.broker_pace_limits()

  @doc false
  # `Yggdrasil.Broker.Sender`'s call: it sends share `index` of `of` of
  # every wide fan-out.
  @spec set_sender(non_neg_integer(), pos_integer(), pid()) :: :ok
  def set_sender(index, of, pid), do: Native.broker_set_sender(index, of, pid)

  @doc false
  # A subscriber process dropped `dropped` events it could not keep up with.
  @spec shed(t(), pos_integer()) :: :ok
  def shed(client, dropped), do: Native.broker_shed(client, dropped)

  @doc false
  @spec stats(t()) :: %{atom() => non_neg_integer()}
  def stats(client), do: Native.broker_stats(client)
end
