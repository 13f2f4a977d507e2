defmodule Yggdrasil.Broker.Client do
  @moduledoc false
  # The one way into the broker side of the NIF (`Yggdrasil.Engine` is the
  # way into the engine side). A client is the resource of one broker and
  # namespace (`native/yggdrasil_nif/src/broker.rs`); every call returns at
  # once, and what happens later arrives as messages tagged
  # `:"$yggdrasil_broker"` (listed in `Yggdrasil.Native`).

  alias Yggdrasil.Native

  # Above this size, copying the payload may take longer than a scheduler
  # slice (memcpy at a few GB/s on this machine: ~1 MB is ~0.2 ms, leaving
  # room for a loaded core).
  @dirty_payload_bytes 1024 * 1024

  @typedoc "A broker client resource."
  @type t :: reference()

  @doc false
  # The tag of every message a client sends.
  defmacro tag, do: :"$yggdrasil_broker"

  @doc false
  # The brokers compiled into the NIF.
  @spec features() :: [atom()]
  def features, do: Native.broker_features()

  @doc false
  @spec open(atom(), keyword(), pid()) :: {:ok, t()} | {:error, binary()}
  def open(broker, config, owner), do: Native.broker_open(broker, Map.new(config), owner)

  @doc false
  @spec check_topic(t(), term()) :: :ok | {:error, binary()}
  def check_topic(client, name), do: Native.broker_check_topic(client, name)

  @doc false
  @spec subscribe(t(), term(), pid()) :: :ok | {:error, binary()}
  def subscribe(client, name, pid), do: Native.broker_subscribe(client, name, pid)

  @doc false
  @spec unsubscribe(t(), term(), pid()) :: :ok | {:error, binary()}
  def unsubscribe(client, name, pid), do: Native.broker_unsubscribe(client, name, pid)

  @doc false
  # `:ok`: one `{tag, :published, tag, result}` reaches the caller.
  @spec publish(t(), term(), binary(), map(), pos_integer()) :: :ok | {:error, binary()}
  def publish(client, name, payload, properties, tag)
      when byte_size(payload) > @dirty_payload_bytes,
      do: Native.broker_publish_dirty(client, name, payload, properties, tag)

  def publish(client, name, payload, properties, tag),
    do: Native.broker_publish(client, name, payload, properties, tag)

  @doc false
  @spec stats(t()) :: %{atom() => non_neg_integer()}
  def stats(client), do: Native.broker_stats(client)

  @doc false
  @spec runtime_stats() :: %{atom() => non_neg_integer() | boolean()}
  def runtime_stats, do: Native.broker_runtime_stats()
end
