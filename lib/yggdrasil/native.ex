defmodule Yggdrasil.Native do
  @moduledoc false
  # The NIF stubs. Every function here is replaced by the Rust implementation
  # in `native/yggdrasil_nif` when the library loads (see `load/0`).
  #
  # Channel keys are `%Yggdrasil.Channel{}` structs with `metadata: nil`;
  # identity is the whole term compared with `=:=`.

  @on_load :load

  @doc false
  def load do
    priv =
      case :code.priv_dir(:yggdrasil) do
        {:error, _} -> "priv"
        dir -> to_string(dir)
      end

    path = Path.join(priv, "native/libyggdrasil_nif")

    case :erlang.load_nif(String.to_charlist(path), 0) do
      :ok ->
        :ok

      {:error, {:reload, _}} ->
        :ok

      {:error, reason} ->
        # The module still loads, with stubs that raise a clear error, and
        # `Yggdrasil.Application` refuses to start with this message (one
        # clear error, not a failed on_load and then UndefinedFunctionErrors).
        message =
          "yggdrasil: could not load the native engine from #{path}.so: #{inspect(reason)}. " <>
            "Build it with `mix compile` (needs cargo), or `make build` in the yggdrasil checkout."

        :persistent_term.put({__MODULE__, :load_error}, message)
        :ok
    end
  end

  @doc false
  # Why the NIF library did not load, or nil when it did.
  @spec load_error() :: binary() | nil
  def load_error, do: :persistent_term.get({__MODULE__, :load_error}, nil)

  defp not_loaded do
    :erlang.nif_error(
      "yggdrasil native engine not loaded: build it with `mix compile` (needs cargo on PATH)"
    )
  end

  def subscribe(_channel), do: not_loaded()
  def unsubscribe(_channel), do: not_loaded()
  def publish(_channel, _message), do: not_loaded()
  def publish_more(_continuation, _message), do: not_loaded()
  def set_connected(_channel, _connected, _message), do: not_loaded()
  def set_watched(_channel, _watched), do: not_loaded()
  def set_janitor(_pid), do: not_loaded()
  def subscribers_page(_channel), do: not_loaded()
  def subscribers_more(_cursor), do: not_loaded()
  def watched_page(_from), do: not_loaded()
  def subscriber_count(_channel), do: not_loaded()
  def is_subscribed(_channel, _pid), do: not_loaded()
  def is_connected(_channel), do: not_loaded()
  def info, do: not_loaded()
  def call_stats(_reset), do: not_loaded()
  def json_encode(_term), do: not_loaded()
  def json_encode_dirty(_term), do: not_loaded()
  def json_decode(_binary), do: not_loaded()
  def json_decode_dirty(_binary), do: not_loaded()

  @doc false
  # TEST HOOK, never called by the library: panics inside the NIF on purpose
  # (`:plain`, or `:table` while holding the subscription table's lock) to
  # prove a Rust panic surfaces as `ErlangError` `:nif_panicked`, not a crash.
  def debug_panic(_mode), do: not_loaded()

  @doc false
  # The channel's subscribers as one list, fetched a bounded page per NIF
  # call (a channel may have millions), all from one snapshot.
  def subscribers(key) do
    case subscribers_page(key) do
      {pids, nil} -> pids
      {pids, cursor} -> collect(cursor, [pids])
    end
  end

  defp collect(cursor, pages) do
    case subscribers_more(cursor) do
      {pids, nil} -> :lists.append(:lists.reverse([pids | pages]))
      {pids, cursor} -> collect(cursor, [pids | pages])
    end
  end

  @doc false
  # The keys of every watched channel (one with an adapter process), read a
  # bounded page of the table per NIF call.
  def watched_channels, do: watched_from(0, [])

  defp watched_from(nil, pages), do: pages |> :lists.reverse() |> :lists.append()

  defp watched_from(from, pages) do
    {keys, next} = watched_page(from)
    watched_from(next, [keys | pages])
  end

  @doc false
  # Sends `message` to every subscriber of `key`, resuming fan-outs that
  # yielded the scheduler until all are served.
  def broadcast(key, message), do: finish(publish(key, message), message)

  @doc false
  def broadcast_state(key, connected, message),
    do: finish(set_connected(key, connected, message), message)

  defp finish(:ok, _message), do: :ok
  defp finish({:more, rest}, message), do: finish(publish_more(rest, message), message)
end
